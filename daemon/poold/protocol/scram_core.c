/*
 * SCRAM-SHA-256, server side, for the C login: see scram_core.h. SHA-256 is
 * FIPS 180-4 and HMAC is RFC 2104, written out here so that the extension
 * needs no library beyond Python's own. tests/unit/test_native_login.py checks
 * them through logins whose client (hashlib and hmac) verifies the server's
 * signature, over AuthMessages of every length across SHA-256's blocks.
 */
#include "scram_core.h"

#include <string.h>

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void
sha256_block(uint32_t st[8], const unsigned char *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = st[0], b = st[1], c = st[2], d = st[3], e = st[4], f = st[5], g = st[6], h = st[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    st[0] += a;
    st[1] += b;
    st[2] += c;
    st[3] += d;
    st[4] += e;
    st[5] += f;
    st[6] += g;
    st[7] += h;
}

void
sha256_init(Sha256 *h)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(h->state, iv, sizeof iv);
    h->length = 0;
    h->used = 0;
}

void
sha256_update(Sha256 *h, const void *data, size_t n)
{
    const unsigned char *p = data;
    h->length += n;
    if (h->used) {
        size_t take = 64 - h->used < n ? 64 - h->used : n;
        memcpy(h->block + h->used, p, take);
        h->used += take;
        p += take;
        n -= take;
        if (h->used < 64)
            return;
        sha256_block(h->state, h->block);
        h->used = 0;
    }
    for (; n >= 64; p += 64, n -= 64)
        sha256_block(h->state, p);
    memcpy(h->block, p, n);
    h->used = n;
}

void
sha256_final(Sha256 *h, unsigned char out[32])
{
    uint64_t bits = h->length * 8;
    unsigned char pad = 0x80;
    sha256_update(h, &pad, 1);
    pad = 0;
    while (h->used != 56)
        sha256_update(h, &pad, 1);
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(h, len, 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(h->state[i] >> 24);
        out[4 * i + 1] = (unsigned char)(h->state[i] >> 16);
        out[4 * i + 2] = (unsigned char)(h->state[i] >> 8);
        out[4 * i + 3] = (unsigned char)h->state[i];
    }
}

void
hmac_sha256(const unsigned char *key, size_t key_len, const void *const *parts, const size_t *lengths, int count,
            unsigned char out[32])
{
    unsigned char k[64] = {0}, pad[64], inner[32];
    Sha256 h;
    if (key_len > 64) {
        sha256_init(&h);
        sha256_update(&h, key, key_len);
        sha256_final(&h, k);
    }
    else {
        memcpy(k, key, key_len);
    }
    for (int i = 0; i < 64; i++)
        pad[i] = k[i] ^ 0x36;
    sha256_init(&h);
    sha256_update(&h, pad, 64);
    for (int i = 0; i < count; i++)
        sha256_update(&h, parts[i], lengths[i]);
    sha256_final(&h, inner);
    for (int i = 0; i < 64; i++)
        pad[i] = k[i] ^ 0x5c;
    sha256_init(&h);
    sha256_update(&h, pad, 64);
    sha256_update(&h, inner, 32);
    sha256_final(&h, out);
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t
base64_encode(const unsigned char *in, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = B64[v >> 18 & 63];
        out[o++] = B64[v >> 12 & 63];
        out[o++] = i + 1 < n ? B64[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? B64[v & 63] : '=';
    }
    return o;
}

static int
b64_value(char c)
{
    const char *p = c ? strchr(B64, c) : NULL;
    return p ? (int)(p - B64) : -1;
}

/* A 32-byte key in base64: 43 characters and one '='. Only the canonical form
 * (the two spare bits zero) is taken here; anything else is scram.py's to judge. */
static int
decode_key(const char *in, size_t n, unsigned char out[SCRAM_KEY_LEN])
{
    if (n != 44 || in[43] != '=')
        return -1;
    uint32_t v = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < 43; i++) {
        int d = b64_value(in[i]);
        if (d < 0)
            return -1;
        v = v << 6 | (uint32_t)d;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(v >> bits);
            v &= (1u << bits) - 1;
        }
    }
    return o == SCRAM_KEY_LEN && v == 0 ? 0 : -1;
}

/* printable ASCII, space included: such text is its own UTF-8, and scram.py's checks read it the same */
static int
printable(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x20 || (unsigned char)p[i] > 0x7e)
            return 0;
    return 1;
}

int
scram_server_first(ScramServer *s, const char *msg, size_t n, const char *server_nonce)
{
    /* gs2-header "n,," or "y,,", then exactly "n=<name>,r=<nonce>" (scram.py: two attributes, no extensions) */
    if (n > SCRAM_MAX_MESSAGE || n < 3 || !printable(msg, n) || (msg[0] != 'n' && msg[0] != 'y') || msg[1] != ',' ||
        msg[2] != ',')
        return SCRAM_ELSEWHERE;
    const char *bare = msg + 3;
    size_t bare_len = n - 3;
    const char *comma = memchr(bare, ',', bare_len);
    if (bare_len < 2 || bare[0] != 'n' || bare[1] != '=' || comma == NULL)
        return SCRAM_ELSEWHERE;
    const char *attr = comma + 1;
    size_t attr_len = (size_t)(bare + bare_len - attr);
    if (attr_len < 3 || attr[0] != 'r' || attr[1] != '=' || memchr(attr, ',', attr_len) != NULL)
        return SCRAM_ELSEWHERE;
    const char *nonce = attr + 2;
    size_t nonce_len = attr_len - 2;
    if (memchr(nonce, ' ', nonce_len) != NULL) /* RFC 5802 printable: %x21-2B / %x2D-7E */
        return SCRAM_ELSEWHERE;
    if (2 + nonce_len + SCRAM_NONCE_LEN + s->tail_len > sizeof s->server_first)
        return SCRAM_ELSEWHERE;
    s->cbind_flag = msg[0];
    memcpy(s->client_first_bare, bare, bare_len);
    s->client_first_bare_len = bare_len;
    char *out = s->server_first;
    memcpy(out, "r=", 2);
    memcpy(out + 2, nonce, nonce_len);
    memcpy(out + 2 + nonce_len, server_nonce, SCRAM_NONCE_LEN);
    s->nonce_len = nonce_len + SCRAM_NONCE_LEN;
    memcpy(out + 2 + s->nonce_len, s->tail, s->tail_len);
    s->server_first_len = 2 + s->nonce_len + s->tail_len;
    return SCRAM_OK;
}

int
scram_server_final(ScramServer *s, const char *msg, size_t n, char *out, size_t *out_len)
{
    /* exactly "c=<biws|eSws>,r=<nonce>,p=<proof>": what scram.py's split finds, with the values it expects */
    const char *cbind = s->cbind_flag == 'y' ? "eSws" : "biws"; /* base64 of "y,," and "n,," */
    size_t without_proof = 2 + 4 + 3 + s->nonce_len;
    if (n != without_proof + 3 + 44 || !printable(msg, n) || memcmp(msg, "c=", 2) != 0 ||
        memcmp(msg + 2, cbind, 4) != 0 || memcmp(msg + 6, ",r=", 3) != 0 ||
        memcmp(msg + 9, s->server_first + 2, s->nonce_len) != 0 || memcmp(msg + without_proof, ",p=", 3) != 0)
        return SCRAM_ELSEWHERE;
    unsigned char proof[SCRAM_KEY_LEN], signature[SCRAM_KEY_LEN], client_key[SCRAM_KEY_LEN], check[SCRAM_KEY_LEN];
    if (decode_key(msg + without_proof + 3, 44, proof) < 0)
        return SCRAM_ELSEWHERE;
    /* AuthMessage = client-first-bare "," server-first "," client-final-without-proof */
    const void *parts[5] = {s->client_first_bare, ",", s->server_first, ",", msg};
    size_t lengths[5] = {s->client_first_bare_len, 1, s->server_first_len, 1, without_proof};
    hmac_sha256(s->stored_key, SCRAM_KEY_LEN, parts, lengths, 5, signature);
    for (int i = 0; i < SCRAM_KEY_LEN; i++)
        client_key[i] = proof[i] ^ signature[i];
    Sha256 h;
    sha256_init(&h);
    sha256_update(&h, client_key, SCRAM_KEY_LEN);
    sha256_final(&h, check);
    unsigned char diff = 0; /* compared in constant time, as hmac.compare_digest does */
    for (int i = 0; i < SCRAM_KEY_LEN; i++)
        diff |= check[i] ^ s->stored_key[i];
    if (diff)
        return SCRAM_ELSEWHERE; /* a wrong password: scram.py says so */
    hmac_sha256(s->server_key, SCRAM_KEY_LEN, parts, lengths, 5, signature);
    memcpy(out, "v=", 2);
    *out_len = 2 + base64_encode(signature, SCRAM_KEY_LEN, out + 2);
    return SCRAM_OK;
}
