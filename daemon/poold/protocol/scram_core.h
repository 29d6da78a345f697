/*
 * The server side of a SCRAM-SHA-256 exchange in C, sans-IO: protocol/scram.py's
 * ScramExchange for the messages every libpq-based client sends, and nothing
 * else. Used by the C login in _relaycore.c.
 *
 * Each step accepts a strict subset of what scram.py accepts and answers with
 * the same bytes. Whatever falls outside the subset (a malformed message, a
 * long one, a character outside printable ASCII, a wrong proof) returns
 * SCRAM_ELSEWHERE: the caller then replays the login through the Python
 * exchange, which gives the answer, error or not. So this file never decides a
 * failure, and accepts a proof only where scram.py accepts it: with the same
 * AuthMessage, SHA-256(proof XOR HMAC(StoredKey, AuthMessage)) == StoredKey.
 */
#ifndef POOLD_SCRAM_CORE_H
#define POOLD_SCRAM_CORE_H

#include <stddef.h>
#include <stdint.h>

#define SCRAM_KEY_LEN 32
#define SCRAM_NONCE_BYTES 18 /* scram.py NONCE_BYTES: 24 characters of base64 */
#define SCRAM_NONCE_LEN 24
#define SCRAM_MAX_MESSAGE 512 /* a longer client message is left to scram.py */
#define SCRAM_OK 0
#define SCRAM_ELSEWHERE 1

typedef struct {
    uint32_t state[8];
    uint64_t length;
    unsigned char block[64];
    size_t used;
} Sha256;

void sha256_init(Sha256 *h);
void sha256_update(Sha256 *h, const void *data, size_t n);
void sha256_final(Sha256 *h, unsigned char out[32]);
void hmac_sha256(const unsigned char *key, size_t key_len, const void *const *parts, const size_t *lengths,
                 int count, unsigned char out[32]);

/* Standard base64 with padding; out must hold 4 * ((n + 2) / 3) bytes. Returns the length written. */
size_t base64_encode(const unsigned char *in, size_t n, char *out);

typedef struct {
    unsigned char stored_key[SCRAM_KEY_LEN], server_key[SCRAM_KEY_LEN];
    char cbind_flag; /* 'n' or 'y' from the gs2 header */
    char client_first_bare[SCRAM_MAX_MESSAGE];
    size_t client_first_bare_len;
    char server_first[2 * SCRAM_MAX_MESSAGE]; /* r=<client nonce><server nonce>,s=<salt>,i=<iterations> */
    size_t server_first_len;
    size_t nonce_len; /* the combined nonce: server_first[2 : 2 + nonce_len] */
    char tail[128];   /* ",s=<salt>,i=<iterations>": the end of server-first */
    size_t tail_len;
} ScramServer;

/* client-first-message in; server-first-message into s->server_first, from
 * the keys and tail set by the caller and server_nonce (SCRAM_NONCE_LEN characters). */
int scram_server_first(ScramServer *s, const char *client_first, size_t n, const char *server_nonce);

/* client-final-message in; on SCRAM_OK, out holds "v=<ServerSignature>" and
 * *out_len its length (out: at least 2 + 44 bytes). */
int scram_server_final(ScramServer *s, const char *client_final, size_t n, char *out, size_t *out_len);

#endif
