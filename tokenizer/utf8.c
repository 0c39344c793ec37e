/* Strict UTF-8: the shortest form only, no surrogates, nothing above U+10FFFF. */
#include <string.h>

#include "tokenizer/tok_internal.h"

int utf8_check(const uint8_t *s, size_t n)
{
    if (n == 0) return -1;
    uint8_t b = s[0];
    if (b < 0x80) return 1;
    int len;
    uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (b >= 0xC2 && b <= 0xDF) {
        len = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
        len = 3;
        if (b == 0xE0) lo = 0xA0;     /* overlong */
        if (b == 0xED) hi = 0x9F;     /* surrogates */
    } else if (b >= 0xF0 && b <= 0xF4) {
        len = 4;
        if (b == 0xF0) lo = 0x90;     /* overlong */
        if (b == 0xF4) hi = 0x8F;     /* above U+10FFFF */
    } else {
        return 0;
    }
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n) return -1;
        uint8_t c = s[i];
        if (i == 1 ? c < lo || c > hi : c < 0x80 || c > 0xBF) return 0;
    }
    return len;
}

int utf8_valid_char(const uint8_t *s, size_t n)
{
    int r = utf8_check(s, n);
    return r > 0 ? r : 0;
}

int utf8_decode(const uint8_t *s, uint32_t *cp)
{
    uint8_t b = s[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    if (b < 0xE0) {
        *cp = (uint32_t)(b & 0x1F) << 6 | (s[1] & 0x3F);
        return 2;
    }
    if (b < 0xF0) {
        *cp = (uint32_t)(b & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
        return 3;
    }
    *cp = (uint32_t)(b & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 | (uint32_t)(s[2] & 0x3F) << 6 |
          (s[3] & 0x3F);
    return 4;
}

size_t utf8_invalid_at(const char *text, size_t len)
{
    const uint8_t *s = (const uint8_t *)text;
    size_t i = 0;
    while (i < len) {
        /* ASCII runs dominate real text: skip them eight bytes at a time. */
        while (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= len) break;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int l = utf8_valid_char(s + i, len - i);
        if (!l) return i;
        i += (size_t)l;
    }
    return SIZE_MAX;
}
