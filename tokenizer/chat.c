/* Chat templates. apr does not run Jinja: it recognises the templates it
 * knows from tokenizer.chat_template and renders them in C, byte for byte
 * what the Jinja text produces for system/user/assistant(/tool) messages. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

#define QWEN_DEFAULT_SYSTEM "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

static bool has(const char *s, size_t n, const char *needle)
{
    return memmem(s, n, needle, strlen(needle)) != NULL;
}

enum apr_chat_tmpl apr_chat_detect_str(const char *tmpl, size_t len)
{
    if (!tmpl || !len) return APR_CHAT_UNKNOWN;
    if (has(tmpl, len, "<|im_start|>") && has(tmpl, len, "<|im_end|>"))
        return has(tmpl, len, QWEN_DEFAULT_SYSTEM) ? APR_CHAT_QWEN2 : APR_CHAT_CHATML;
    if (has(tmpl, len, "[INST]") && has(tmpl, len, "[/INST]")) return APR_CHAT_LLAMA2;
    return APR_CHAT_UNKNOWN;
}

enum apr_chat_tmpl apr_chat_detect(const gguf_file *f)
{
    gguf_str s = gguf_get_str(f, "tokenizer.chat_template");
    return apr_chat_detect_str(s.s, s.len);
}

const char *apr_chat_name(enum apr_chat_tmpl tmpl)
{
    switch (tmpl) {
    case APR_CHAT_CHATML: return "chatml";
    case APR_CHAT_LLAMA2: return "llama2";
    case APR_CHAT_QWEN2: return "qwen2";
    default: return "unknown";
    }
}

typedef struct {
    char *s;
    size_t n, cap;
    bool oom;
} sbuf;

static void put(sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->n + n + 1 > cap) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void puts_(sbuf *b, const char *s) { put(b, s, strlen(s)); }

/* Python's str.strip(): the Llama-2 template strips every message. */
static void put_stripped(sbuf *b, const char *s)
{
    size_t n = strlen(s);
    while (n && strchr(" \t\n\r\v\f", s[n - 1])) n--;
    while (n && strchr(" \t\n\r\v\f", *s)) {
        s++;
        n--;
    }
    put(b, s, n);
}

static bool role_is(const apr_chat_msg *m, const char *r) { return m->role && !strcmp(m->role, r); }

static int check_msgs(const apr_chat_msg *msgs, size_t n, bool tool_ok, char err[APR_ERRLEN])
{
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content) {
            snprintf(err, APR_ERRLEN, "chat: message %zu has no role or content", i);
            return -1;
        }
        if (!role_is(&msgs[i], "system") && !role_is(&msgs[i], "user") &&
            !role_is(&msgs[i], "assistant") && !(tool_ok && role_is(&msgs[i], "tool"))) {
            snprintf(err, APR_ERRLEN, "chat: message %zu has unknown role '%.32s'", i, msgs[i].role);
            return -1;
        }
    }
    return 0;
}

/* Qwen2.5's template (tools aside): a default system turn when the first
 * message is not a system one; a first system message is not repeated;
 * tool results are gathered into user turns. Plain ChatML has neither. */
static void render_chatml(sbuf *b, const apr_chat_msg *msgs, size_t n, bool qwen, bool gen)
{
    if (qwen) {
        if (n && role_is(&msgs[0], "system")) {
            puts_(b, "<|im_start|>system\n");
            puts_(b, msgs[0].content);
            puts_(b, "<|im_end|>\n");
        } else {
            puts_(b, "<|im_start|>system\n" QWEN_DEFAULT_SYSTEM "<|im_end|>\n");
        }
    }
    for (size_t i = 0; i < n; i++) {
        const apr_chat_msg *m = &msgs[i];
        if (qwen && i == 0 && role_is(m, "system")) continue;
        if (role_is(m, "tool")) {
            if (i == 0 || !role_is(&msgs[i - 1], "tool")) puts_(b, "<|im_start|>user");
            puts_(b, "\n<tool_response>\n");
            puts_(b, m->content);
            puts_(b, "\n</tool_response>");
            if (i + 1 == n || !role_is(&msgs[i + 1], "tool")) puts_(b, "<|im_end|>\n");
            continue;
        }
        puts_(b, "<|im_start|>");
        puts_(b, m->role);
        puts_(b, "\n");
        puts_(b, m->content);
        puts_(b, "<|im_end|>\n");
    }
    if (gen) puts_(b, "<|im_start|>assistant\n");
}

/* Meta's Llama-2 chat template: the system message goes inside the first
 * user turn; roles must alternate user/assistant. */
static int render_llama2(sbuf *b, const apr_chat_msg *msgs, size_t n, char err[APR_ERRLEN])
{
    const char *sys = NULL;
    if (n && role_is(&msgs[0], "system")) {
        sys = msgs[0].content;
        msgs++;
        n--;
    }
    for (size_t i = 0; i < n; i++) {
        const apr_chat_msg *m = &msgs[i];
        if (role_is(m, "user") != (i % 2 == 0) || role_is(m, "system")) {
            snprintf(err, APR_ERRLEN, "chat: llama2 roles must alternate user/assistant/user/...");
            return -1;
        }
        if (role_is(m, "user")) {
            puts_(b, "<s>[INST] ");
            if (i == 0 && sys) {
                /* strip() applies to the whole joined content. */
                sbuf c = {0};
                puts_(&c, "<<SYS>>\n");
                puts_(&c, sys);
                puts_(&c, "\n<</SYS>>\n\n");
                puts_(&c, m->content);
                if (c.oom) b->oom = true;
                else put_stripped(b, c.s);
                free(c.s);
            } else {
                put_stripped(b, m->content);
            }
            puts_(b, " [/INST]");
        } else {
            puts_(b, " ");
            put_stripped(b, m->content);
            puts_(b, " </s>");
        }
    }
    return 0;
}

char *apr_chat_render(enum apr_chat_tmpl tmpl, const apr_chat_msg *msgs, size_t n,
                      bool add_generation_prompt, bool allow_plain, char err[APR_ERRLEN])
{
    sbuf b = {0};
    switch (tmpl) {
    case APR_CHAT_CHATML:
    case APR_CHAT_QWEN2:
        if (check_msgs(msgs, n, true, err) < 0) return NULL;
        render_chatml(&b, msgs, n, tmpl == APR_CHAT_QWEN2, add_generation_prompt);
        break;
    case APR_CHAT_LLAMA2:
        if (check_msgs(msgs, n, false, err) < 0) return NULL;
        if (render_llama2(&b, msgs, n, err) < 0) {
            free(b.s);
            return NULL;
        }
        break;
    default:
        if (!allow_plain) {
            snprintf(err, APR_ERRLEN, "chat: the model's chat template is not one apr knows "
                                      "(ChatML, Qwen2, Llama-2); plain concatenation must be asked for");
            return NULL;
        }
        if (check_msgs(msgs, n, true, err) < 0) return NULL;
        /* Plain: the contents one after another, a newline after each. */
        for (size_t i = 0; i < n; i++) {
            puts_(&b, msgs[i].content);
            puts_(&b, "\n");
        }
        break;
    }
    if (!b.oom && !b.s) puts_(&b, "");
    if (b.oom) {
        free(b.s);
        snprintf(err, APR_ERRLEN, "chat: out of memory rendering %zu messages", n);
        return NULL;
    }
    return b.s;
}
