/* proto/ internals shared by request.c and reply.c; not part of the interface. */
#ifndef APR_PROTO_INTERNAL_H
#define APR_PROTO_INTERNAL_H

#include "proto/proto.h"

/* Deepest container nesting we accept; requests need 3 (map, array, map). */
#define APR_MP_MAX_DEPTH 8

/* Checks that buf holds exactly one well-formed msgpack object before
 * msgpack-c sees it: msgpack-c allocates arrays and maps by their declared
 * size, so a 5-byte frame claiming 2^32 elements must be refused here. Every
 * declared count must fit the bytes left, nesting stays within max_depth and
 * the object count within max_objects. Returns APR_PERR_NONE, or a code with
 * a message in msg. */
apr_perr apr_mp_scan(const unsigned char *buf, size_t len, int max_depth, size_t max_objects,
                     char msg[APR_ERRLEN]);

/* Unpacks a frame apr_mp_scan accepted; 0 or -1 with a message. */
int apr_mp_unpack(const void *buf, size_t len, msgpack_unpacked *u, char msg[APR_ERRLEN]);

/* Writes s as a short printable quote (for naming hostile keys in messages). */
void apr_mp_quote(char *dst, size_t cap, const char *s, size_t len);

int apr_mp_pack_str(msgpack_packer *pk, const char *s, size_t len);
int apr_mp_pack_cstr(msgpack_packer *pk, const char *s);
int apr_mp_pack_id(msgpack_packer *pk, const apr_id *id);

/* Reads an id value (nil, int or string of at most APR_ID_MAX bytes, valid
 * UTF-8, no NUL). 0 or -1 with a message. */
int apr_mp_read_id(const msgpack_object *v, apr_id *id, char msg[APR_ERRLEN]);

/* True when the key object is the string `name`. */
bool apr_mp_key_is(const msgpack_object *k, const char *name);

#endif
