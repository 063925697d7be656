/*
 * dvrlink.protocol._dataplane_seal: the data plane's bulk packets, framed and sealed in C, and
 * its packets opened in C.
 *
 * One call builds a run of full data plane packets of one stream (a STREAM frame that runs to
 * the end of the packet, as protocol/dataplane.py's bulk path builds them), and on request a
 * shorter last one for the queue's tail, and seals each with
 * ChaCha20-Poly1305 through OpenSSL's EVP interface, one cipher context per run. The Python
 * path (DataplaneConnection._send_bulk) stays the reference and the fallback: a test checks
 * that both put the same bytes on the wire. See docs/protocol.md, "The data plane".
 *
 * Packet: first byte, 4-byte receive tag, 48-bit packet number (the 11-byte header, also the
 * AAD), then the sealed frames and the 16-byte tag. Nonce: the 12-byte IV xor the packet number
 * (big-endian, right-aligned).
 *
 * Opener: one direction's key, kept in one OpenSSL context, that opens packets one call each
 * (dataplane_keys.PacketKey.open uses it where the module was built).
 *
 * The cipher is fetched once, when the module loads (OpenSSL 3: EVP_CIPHER_fetch; an init with
 * EVP_chacha20_poly1305() would fetch it again on every call).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <string.h>

#define HEADER_SIZE 11
#define TAG_SIZE 16
#define KEY_SIZE 32
#define IV_SIZE 12
#define RECEIVE_TAG_SIZE 4
#define MAX_DATAGRAM 65507
#define MAX_PACKET_NUMBER ((1ULL << 48) - 1)
#define MAX_VARINT ((1ULL << 62) - 1)

static const EVP_CIPHER *cipher(void);

static size_t varint_size(unsigned long long v) {
    if (v < 64ULL) return 1;
    if (v < 16384ULL) return 2;
    if (v < 1073741824ULL) return 4;
    return 8;
}

static size_t put_varint(unsigned char *p, unsigned long long v) {
    size_t size = varint_size(v);
    static const unsigned char prefix[9] = {0, 0x00, 0x40, 0, 0x80, 0, 0, 0, 0xC0};
    for (size_t i = 0; i < size; i++) {
        p[i] = (unsigned char)(v >> (8 * (size - 1 - i)));
    }
    p[0] |= prefix[size];
    return size;
}

PyDoc_STRVAR(seal_stream_run_doc,
"seal_stream_run(key, iv, first_byte, receive_tag, packet_number, frame_prefix, offset, data,\n"
"                max_payload, max_packets, short_last=False) -> list[bytes]\n"
"\n"
"Full packets of one stream's bytes ``data`` (which start at stream offset ``offset``), each a\n"
"STREAM frame to the end of the packet: ``frame_prefix`` (the frame type and the stream id's\n"
"varint), the offset's varint, then as many bytes as fill ``max_payload``. Stops before a packet\n"
"that ``data`` cannot fill, after ``max_packets``, or before the packet number passes 2**48 - 1.\n"
"With ``short_last``, the bytes of ``data`` that cannot fill a packet go, within ``max_packets``,\n"
"in one shorter last packet.\n"
"The packets are numbered from ``packet_number`` and sealed with ChaCha20-Poly1305 (``key``,\n"
"``iv``). Raises ValueError for arguments out of range, RuntimeError if OpenSSL fails.");

static PyObject *seal_stream_run(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer key = {0}, iv = {0}, tag = {0}, prefix = {0}, data = {0};
    int first = 0;
    unsigned long long number = 0, offset = 0;
    Py_ssize_t max_payload = 0, max_packets = 0;
    int short_last = 0;
    PyObject *out = NULL;
    EVP_CIPHER_CTX *ctx = NULL;
    unsigned char *plain = NULL;

    if (!PyArg_ParseTuple(args, "y*y*iy*Ky*Ky*nn|p:seal_stream_run", &key, &iv, &first, &tag, &number,
                          &prefix, &offset, &data, &max_payload, &max_packets, &short_last)) {
        return NULL;
    }
    if (key.len != KEY_SIZE || iv.len != IV_SIZE || tag.len != RECEIVE_TAG_SIZE) {
        PyErr_Format(PyExc_ValueError, "key, iv and receive tag must be %d, %d and %d bytes (got %zd, %zd, %zd)",
                     KEY_SIZE, IV_SIZE, RECEIVE_TAG_SIZE, key.len, iv.len, tag.len);
        goto done;
    }
    if (first < 0 || first > 255 || prefix.len < 1 || prefix.len > 9) {
        PyErr_SetString(PyExc_ValueError, "first byte must be 0..255 and the frame prefix 1..9 bytes");
        goto done;
    }
    if (max_payload < prefix.len + 8 + 1 || max_payload > MAX_DATAGRAM - HEADER_SIZE - TAG_SIZE) {
        PyErr_Format(PyExc_ValueError, "max_payload %zd out of range", max_payload);
        goto done;
    }
    if (offset > MAX_VARINT || max_packets < 0) {
        PyErr_SetString(PyExc_ValueError, "offset beyond 2**62 - 1, or a negative packet count");
        goto done;
    }
    out = PyList_New(0);
    if (out == NULL) goto done;
    plain = PyMem_Malloc((size_t)max_payload);
    ctx = EVP_CIPHER_CTX_new();
    if (plain == NULL || ctx == NULL) {
        PyErr_NoMemory();
        Py_CLEAR(out);
        goto done;
    }
    if (EVP_EncryptInit_ex(ctx, cipher(), NULL, (const unsigned char *)key.buf, NULL) != 1) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused the ChaCha20-Poly1305 key");
        Py_CLEAR(out);
        goto done;
    }
    const unsigned char *source = (const unsigned char *)data.buf;
    Py_ssize_t left = data.len;
    memcpy(plain, prefix.buf, (size_t)prefix.len);
    for (Py_ssize_t produced = 0; produced < max_packets && number < MAX_PACKET_NUMBER; produced++) {
        if (offset > MAX_VARINT) break;
        size_t head = (size_t)prefix.len + put_varint(plain + prefix.len, offset);
        Py_ssize_t count = max_payload - (Py_ssize_t)head;
        if (count > left) {
            if (!short_last || left == 0) break;
            count = left; /* the shorter last packet */
        }
        Py_ssize_t size = (Py_ssize_t)head + count;
        /* One update over the whole plaintext: two (the head, then the source) cost more. */
        memcpy(plain + head, source, (size_t)count);
        PyObject *datagram = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + size + TAG_SIZE);
        if (datagram == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        unsigned char *d = (unsigned char *)PyBytes_AS_STRING(datagram);
        d[0] = (unsigned char)first;
        memcpy(d + 1, tag.buf, RECEIVE_TAG_SIZE);
        for (int i = 0; i < 6; i++) d[5 + i] = (unsigned char)(number >> (40 - 8 * i));
        unsigned char nonce[IV_SIZE];
        memcpy(nonce, iv.buf, IV_SIZE);
        for (int i = 0; i < 8; i++) nonce[4 + i] ^= (unsigned char)(number >> (56 - 8 * i));
        int written = 0, last = 0;
        if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1
            || EVP_EncryptUpdate(ctx, NULL, &written, d, HEADER_SIZE) != 1
            || EVP_EncryptUpdate(ctx, d + HEADER_SIZE, &written, plain, (int)size) != 1
            || EVP_EncryptFinal_ex(ctx, d + HEADER_SIZE + written, &last) != 1
            || written + last != size
            || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_SIZE, d + HEADER_SIZE + size) != 1) {
            Py_DECREF(datagram);
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to seal a data plane packet");
            Py_CLEAR(out);
            goto done;
        }
        if (PyList_Append(out, datagram) != 0) {
            Py_DECREF(datagram);
            Py_CLEAR(out);
            goto done;
        }
        Py_DECREF(datagram);
        source += count;
        left -= count;
        offset += (unsigned long long)count;
        number++;
    }
done:
    if (ctx != NULL) EVP_CIPHER_CTX_free(ctx);
    PyMem_Free(plain);
    PyBuffer_Release(&key);
    PyBuffer_Release(&iv);
    PyBuffer_Release(&tag);
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&data);
    return out;
}

/* --- Opener --- */

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *ctx;
    unsigned char iv[IV_SIZE];
} OpenerObject;

static int opener_init(PyObject *op, PyObject *args, PyObject *kwds) {
    OpenerObject *self = (OpenerObject *)op;
    Py_buffer key = {0}, iv = {0};
    static char *keywords[] = {"key", "iv", NULL};
    int result = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*y*:Opener", keywords, &key, &iv)) return -1;
    if (key.len != KEY_SIZE || iv.len != IV_SIZE) {
        PyErr_Format(PyExc_ValueError, "key and iv must be %d and %d bytes (got %zd, %zd)", KEY_SIZE, IV_SIZE,
                     key.len, iv.len);
        goto done;
    }
    if (self->ctx == NULL) self->ctx = EVP_CIPHER_CTX_new();
    if (self->ctx == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (EVP_DecryptInit_ex(self->ctx, cipher(), NULL, (const unsigned char *)key.buf, NULL) != 1) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused the ChaCha20-Poly1305 key");
        goto done;
    }
    memcpy(self->iv, iv.buf, IV_SIZE);
    result = 0;
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&iv);
    return result;
}

static void opener_dealloc(PyObject *op) {
    OpenerObject *self = (OpenerObject *)op;
    PyTypeObject *type = Py_TYPE(op);
    if (self->ctx != NULL) EVP_CIPHER_CTX_free(self->ctx);
    type->tp_free(op);
    Py_DECREF(type);
}

PyDoc_STRVAR(opener_open_doc,
"open(packet_number, header, ciphertext) -> bytes | None\n"
"\n"
"The plaintext of ``ciphertext`` (the sealed frames and the 16-byte tag) under ``packet_number``\n"
"with ``header`` as the associated data, or None if the tag does not verify (or ``ciphertext``\n"
"is shorter than a tag). Raises RuntimeError if OpenSSL fails otherwise.");

static PyObject *opener_open(PyObject *op, PyObject *args) {
    OpenerObject *self = (OpenerObject *)op;
    unsigned long long number = 0;
    Py_buffer header = {0}, sealed = {0};
    PyObject *out = NULL;
    if (!PyArg_ParseTuple(args, "Ky*y*:open", &number, &header, &sealed)) return NULL;
    if (sealed.len < TAG_SIZE || sealed.len > MAX_DATAGRAM || header.len > MAX_DATAGRAM) {
        out = Py_NewRef(Py_None);
        goto done;
    }
    Py_ssize_t size = sealed.len - TAG_SIZE;
    const unsigned char *in = (const unsigned char *)sealed.buf;
    unsigned char nonce[IV_SIZE];
    memcpy(nonce, self->iv, IV_SIZE);
    for (int i = 0; i < 8; i++) nonce[4 + i] ^= (unsigned char)(number >> (56 - 8 * i));
    out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) goto done;
    unsigned char *plain = (unsigned char *)PyBytes_AS_STRING(out);
    int aad = 0, written = 0, last = 0;
    if (EVP_DecryptInit_ex(self->ctx, NULL, NULL, NULL, nonce) != 1
        || EVP_DecryptUpdate(self->ctx, NULL, &aad, (const unsigned char *)header.buf, (int)header.len) != 1
        || EVP_DecryptUpdate(self->ctx, plain, &written, in, (int)size) != 1
        || EVP_CIPHER_CTX_ctrl(self->ctx, EVP_CTRL_AEAD_SET_TAG, TAG_SIZE, (void *)(in + size)) != 1) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to open a data plane packet");
        goto done;
    }
    if (EVP_DecryptFinal_ex(self->ctx, plain + written, &last) != 1 || written + last != size) {
        /* The tag did not verify: forged, corrupted, or under another key. */
        Py_SETREF(out, Py_NewRef(Py_None));
    }
done:
    PyBuffer_Release(&header);
    PyBuffer_Release(&sealed);
    return out;
}

static PyMethodDef opener_methods[] = {
    {"open", opener_open, METH_VARARGS, opener_open_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(opener_doc,
"Opener(key, iv)\n"
"\n"
"Opens the data plane packets of one direction and generation (ChaCha20-Poly1305, ``key`` 32\n"
"bytes, ``iv`` 12), in one OpenSSL context kept for its life.");

static PyType_Slot opener_slots[] = {
    {Py_tp_doc, (void *)opener_doc},
    {Py_tp_init, (void *)opener_init},
    {Py_tp_new, (void *)PyType_GenericNew},
    {Py_tp_dealloc, (void *)opener_dealloc},
    {Py_tp_methods, opener_methods},
    {0, NULL},
};

static PyType_Spec opener_spec = {
    "dvrlink.protocol._dataplane_seal.Opener", sizeof(OpenerObject), 0, Py_TPFLAGS_DEFAULT, opener_slots,
};

/* --- the cipher, fetched once --- */

#if OPENSSL_VERSION_NUMBER >= 0x30000000L
static EVP_CIPHER *fetched = NULL;
#endif

static const EVP_CIPHER *cipher(void) {
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    if (fetched != NULL) return fetched;
#endif
    return EVP_chacha20_poly1305();
}

static PyMethodDef methods[] = {
    {"seal_stream_run", seal_stream_run, METH_VARARGS, seal_stream_run_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_dataplane_seal",
    "The data plane's bulk packets, framed and sealed in C (see seal_stream_run).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__dataplane_seal(void) {
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    if (fetched == NULL) fetched = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
#endif
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    PyObject *type = PyType_FromSpec(&opener_spec);
    if (type == NULL || PyModule_AddObject(m, "Opener", type) != 0) {
        Py_XDECREF(type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
