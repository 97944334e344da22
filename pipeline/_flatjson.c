/*
 * pipeline._flatjson — decode NDJSON lines of *flat* records into typed columns, fast.
 *
 * decode(block: bytes, names: tuple[bytes, ...], kinds: bytes) -> tuple | None
 *
 * ``kinds[i]`` is the type of field ``names[i]``: 'f' float64, 'i' int64, 's' string.
 * Every line of ``block`` (split at '\n') that is blank is skipped; every other line is
 * either decoded into one row or reported as *bad*. A line is decoded only when it is
 * unambiguous: one JSON object, each key one of ``names`` at most once, each value null or
 * of its field's JSON type (a number without fraction or exponent for 'i', any number for
 * 'f', a string for 's'); strings are printable ASCII without escapes. Floats are correctly
 * rounded, as by every conforming JSON reader: one exact IEEE operation when the decimal
 * mantissa is <= 2^53 and |exponent| <= 22 (Clinger's fast path), else strtod_l in the "C"
 * locale (glibc rounds correctly; elsewhere such lines are left to the caller); infinite
 * results are left too. Everything else — unknown keys, escapes, non-ASCII, nested
 * values, booleans, type mismatches, huge numbers, malformed JSON — is a bad line for the
 * caller's general decoder, which also explains rejects. The scan runs without the GIL.
 *
 * Returns None when the block is too large for 32-bit string offsets, else
 * (rows, line_of_row, bad_lines, records, columns): ``line_of_row`` and ``bad_lines`` are
 * int32 arrays (as bytes) of 0-based line numbers, ``records`` counts non-blank lines, and
 * ``columns[i]`` is (values, valid) for 'f'/'i' (float64/int64 and uint8 bytes) or
 * (offsets, data, valid) for 's' (int32 offsets, rows + 1 of them).
 */
#define _GNU_SOURCE /* strtod_l */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FIELDS 64
#define MAX_EXACT (((uint64_t)1) << 53)

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static int buf_grow(buf_t *b, size_t extra) {
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int buf_put(buf_t *b, const void *src, size_t n) {
    if (b->len + n > b->cap && buf_grow(b, n))
        return -1;
    memcpy(b->p + b->len, src, n);
    b->len += n;
    return 0;
}

typedef struct {
    const char *name;
    size_t name_len;
    char kind;
    buf_t values; /* float64 / int64 values, or int32 string offsets */
    buf_t data;   /* string bytes */
    buf_t valid;  /* uint8 per row */
} field_t;

typedef struct {
    int null;
    int64_t i;
    double f;
    const char *s;
    size_t slen;
} slot_t;

static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                 1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static inline const char *skip_ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\r'))
        p++;
    return p;
}

static inline int is_digit(char c) { return c >= '0' && c <= '9'; }

/* The first byte in [p, e) that is '"', '\\', a control character or not printable ASCII
 * (e if none); eight bytes at a time while no such byte is in the word. */
static inline const char *plain_end(const char *p, const char *e) {
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    while (e - p >= 8) {
        uint64_t x;
        memcpy(&x, p, 8);
        uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\'), d = x ^ (ones * 0x7f);
        uint64_t hit = ((q - ones) & ~q) | ((b - ones) & ~b) | ((d - ones) & ~d) |
                       ((x - ones * 0x20) & ~x) | x;
        if (hit & highs)
            break;
        p += 8;
    }
    while (p < e) {
        unsigned char u = (unsigned char)*p;
        if (u == '"' || u == '\\' || u < 0x20 || u >= 0x7f)
            break;
        p++;
    }
    return p;
}

#ifdef __GLIBC__
static locale_t c_locale; /* strtod must not follow the process locale's decimal point */
#endif

/* The correctly rounded double of the JSON number [p, e); 0 if not available here. */
static int slow_double(const char *p, const char *e, double *out) {
#ifdef __GLIBC__
    char *end;
    if (!c_locale)
        return 0;
    double f = strtod_l(p, &end, c_locale);
    if (end != e || !isfinite(f))
        return 0;
    *out = f;
    return 1;
#else
    (void)p, (void)e, (void)out;
    return 0;
#endif
}

/* Parse a JSON number at *pp for a field of ``kind``; 1 on success (advances *pp). */
static int parse_number(const char **pp, const char *e, char kind, slot_t *s) {
    const char *p = *pp;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    if (p >= e || !is_digit(*p))
        return 0;
    uint64_t m = 0;
    int big = 0, digits = 0; /* big: more than 19 digits, beyond uint64 */
    if (*p == '0') {
        p++;
        if (p < e && is_digit(*p))
            return 0; /* leading zero */
    } else {
        while (p < e && is_digit(*p)) {
            if (++digits > 19)
                big = 1;
            else
                m = m * 10 + (unsigned)(*p - '0');
            p++;
        }
    }
    int exp10 = 0, frac = 0, has_exp = 0;
    if (p < e && *p == '.') {
        frac = 1;
        p++;
        if (p >= e || !is_digit(*p))
            return 0;
        while (p < e && is_digit(*p)) {
            if (++digits > 19) {
                big = 1;
            } else {
                m = m * 10 + (unsigned)(*p - '0');
                exp10--;
            }
            p++;
        }
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        has_exp = 1;
        p++;
        int eneg = 0;
        if (p < e && (*p == '+' || *p == '-')) {
            eneg = *p == '-';
            p++;
        }
        if (p >= e || !is_digit(*p))
            return 0;
        int ev = 0;
        while (p < e && is_digit(*p)) {
            if (ev < 10000)
                ev = ev * 10 + (*p - '0');
            p++;
        }
        exp10 += eneg ? -ev : ev;
    }
    if (kind == 'i') {
        if (big)
            return 0;
        if (frac || has_exp)
            return 0;
        if (neg) {
            if (m > ((uint64_t)INT64_MAX) + 1)
                return 0;
            s->i = m == ((uint64_t)INT64_MAX) + 1 ? INT64_MIN : -(int64_t)m;
        } else {
            if (m > (uint64_t)INT64_MAX)
                return 0;
            s->i = (int64_t)m;
        }
    } else if (!big && m <= MAX_EXACT && exp10 >= -22 && exp10 <= 22) { /* 'f', exact */
        double f = (double)m;
        f = exp10 < 0 ? f / POW10[-exp10] : f * POW10[exp10];
        s->f = neg ? -f : f;
    } else if (!slow_double(*pp, p, &s->f)) {
        return 0;
    }
    *pp = p;
    return 1;
}

/* Decode one line [p, e) into slots. 1 = row, 0 = bad, 2 = blank. */
static int parse_line(const char *p, const char *e, field_t *fields, int nf, slot_t *slots,
                      uint64_t *seen) {
    int hint = 0; /* records usually keep one key order: try the field after the last */
    p = skip_ws(p, e);
    if (p == e)
        return 2;
    if (*p != '{')
        return 0;
    p = skip_ws(p + 1, e);
    if (p < e && *p == '}') {
        p++;
        goto done;
    }
    for (;;) {
        if (p >= e || *p != '"')
            return 0;
        const char *k = ++p;
        p = plain_end(p, e);
        if (p >= e || *p != '"')
            return 0;
        size_t klen = (size_t)(p - k);
        p++;
        int fi = -1;
        for (int j = 0; j < nf; j++) {
            int i = hint + j < nf ? hint + j : hint + j - nf;
            if (fields[i].name_len == klen && fields[i].name[0] == k[0] &&
                memcmp(fields[i].name, k, klen) == 0) {
                fi = i;
                break;
            }
        }
        hint = fi + 1;
        if (fi < 0 || (*seen >> fi) & 1)
            return 0; /* unknown or repeated key */
        *seen |= ((uint64_t)1) << fi;
        p = skip_ws(p, e);
        if (p >= e || *p != ':')
            return 0;
        p = skip_ws(p + 1, e);
        if (p >= e)
            return 0;
        slot_t *s = &slots[fi];
        char kind = fields[fi].kind;
        s->null = 0;
        char c = *p;
        if (c == 'n') {
            if (e - p < 4 || memcmp(p, "null", 4) != 0)
                return 0;
            s->null = 1;
            p += 4;
        } else if (c == '"') {
            if (kind != 's')
                return 0;
            const char *start = ++p;
            p = plain_end(p, e);
            if (p >= e || *p != '"')
                return 0;
            s->s = start;
            s->slen = (size_t)(p - start);
            p++;
        } else if (c == '-' || is_digit(c)) {
            if (kind == 's' || !parse_number(&p, e, kind, s))
                return 0;
        } else {
            return 0;
        }
        p = skip_ws(p, e);
        if (p >= e)
            return 0;
        if (*p == ',') {
            p = skip_ws(p + 1, e);
            continue;
        }
        if (*p == '}') {
            p++;
            break;
        }
        return 0;
    }
done:
    p = skip_ws(p, e);
    return p == e ? 1 : 0;
}

static int append_row(field_t *fields, int nf, slot_t *slots, uint64_t seen) {
    for (int i = 0; i < nf; i++) {
        field_t *f = &fields[i];
        slot_t *s = &slots[i];
        uint8_t ok = (uint8_t)(((seen >> i) & 1) && !s->null);
        if (buf_put(&f->valid, &ok, 1))
            return -1;
        if (f->kind == 's') {
            if (ok && buf_put(&f->data, s->s, s->slen))
                return -1;
            int32_t end = (int32_t)f->data.len;
            if (buf_put(&f->values, &end, sizeof end))
                return -1;
        } else if (f->kind == 'i') {
            int64_t v = ok ? s->i : 0;
            if (buf_put(&f->values, &v, sizeof v))
                return -1;
        } else {
            double v = ok ? s->f : 0.0;
            if (buf_put(&f->values, &v, sizeof v))
                return -1;
        }
    }
    return 0;
}

static PyObject *as_bytes(buf_t *b) {
    return PyBytes_FromStringAndSize(b->len ? b->p : "", (Py_ssize_t)b->len);
}

static PyObject *decode(PyObject *self, PyObject *args) {
    Py_buffer block;
    PyObject *names;
    const char *kinds;
    Py_ssize_t nkinds;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*O!y#", &block, &PyTuple_Type, &names, &kinds, &nkinds))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t nf = PyTuple_GET_SIZE(names);
    field_t fields[MAX_FIELDS];
    memset(fields, 0, sizeof fields);
    buf_t line_of_row = {0}, bad = {0};
    if (nf != nkinds || nf > MAX_FIELDS) {
        PyErr_SetString(PyExc_ValueError, "names and kinds must match (at most 64 fields)");
        goto out;
    }
    for (Py_ssize_t i = 0; i < nf; i++) {
        PyObject *n = PyTuple_GET_ITEM(names, i);
        char k = kinds[i];
        if (!PyBytes_Check(n) || (k != 'f' && k != 'i' && k != 's')) {
            PyErr_SetString(PyExc_ValueError, "names must be bytes and kinds 'f', 'i' or 's'");
            goto out;
        }
        fields[i].name = PyBytes_AS_STRING(n);
        fields[i].name_len = (size_t)PyBytes_GET_SIZE(n);
        fields[i].kind = k;
    }
    if (block.len >= INT32_MAX) {
        result = Py_NewRef(Py_None);
        goto out;
    }
    int32_t rows = 0, records = 0;
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    const char *p = block.buf, *end = p + block.len;
    size_t lines = 1; /* size the columns once: one row per line at most */
    for (const char *q = p; (q = memchr(q, '\n', (size_t)(end - q))) != NULL; q++)
        lines++;
    int32_t zero = 0;
    for (Py_ssize_t i = 0; i < nf && !failed; i++) {
        field_t *f = &fields[i];
        size_t width = f->kind == 's' ? sizeof(int32_t) : sizeof(int64_t);
        if (buf_grow(&f->values, width * (lines + 1)) || buf_grow(&f->valid, lines) ||
            (f->kind == 's' && (buf_grow(&f->data, lines * 16) ||
                                buf_put(&f->values, &zero, sizeof zero))))
            failed = 1;
    }
    if (!failed && buf_grow(&line_of_row, lines * sizeof(int32_t)))
        failed = 1;
    slot_t slots[MAX_FIELDS];
    for (int32_t line = 0; p <= end && !failed; line++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *e = nl ? nl : end;
        uint64_t seen = 0;
        int r = parse_line(p, e, fields, (int)nf, slots, &seen);
        if (r != 2)
            records++;
        if (r == 1) {
            if (append_row(fields, (int)nf, slots, seen) || buf_put(&line_of_row, &line, sizeof line))
                failed = 1;
            rows++;
        } else if (r == 0 && buf_put(&bad, &line, sizeof line)) {
            failed = 1;
        }
        if (!nl)
            break;
        p = nl + 1;
    }
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_NoMemory();
        goto out;
    }
    PyObject *cols = PyTuple_New(nf);
    if (!cols)
        goto out;
    for (Py_ssize_t i = 0; i < nf; i++) {
        field_t *f = &fields[i];
        PyObject *col = f->kind == 's'
                            ? Py_BuildValue("(NNN)", as_bytes(&f->values), as_bytes(&f->data),
                                            as_bytes(&f->valid))
                            : Py_BuildValue("(NN)", as_bytes(&f->values), as_bytes(&f->valid));
        if (!col) {
            Py_DECREF(cols);
            goto out;
        }
        PyTuple_SET_ITEM(cols, i, col);
    }
    result = Py_BuildValue("(iNNiN)", rows, as_bytes(&line_of_row), as_bytes(&bad), records,
                           cols);
out:
    for (Py_ssize_t i = 0; i < MAX_FIELDS; i++) {
        free(fields[i].values.p);
        free(fields[i].data.p);
        free(fields[i].valid.p);
    }
    free(line_of_row.p);
    free(bad.p);
    PyBuffer_Release(&block);
    return result;
}


/*
 * join_lines(values: tuple[bytes, ...], max_bytes: int) -> (bytes, bytes) | None
 *
 * Kafka message values that are each one record or NDJSON of several, joined into one block
 * with '\n', plus the index of the message of every line (int32 array as bytes). None unless
 * every value is non-empty bytes of at most ``max_bytes`` with no empty line (no leading,
 * trailing or doubled '\n'): the caller then takes its per-message path.
 */
static PyObject *join_lines(PyObject *self, PyObject *args) {
    PyObject *seq;
    Py_ssize_t max_bytes;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!n", &PyTuple_Type, &seq, &max_bytes))
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq), total = n ? n - 1 : 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyTuple_GET_ITEM(seq, i);
        if (!PyBytes_Check(v))
            Py_RETURN_NONE;
        Py_ssize_t len = PyBytes_GET_SIZE(v);
        const char *s = PyBytes_AS_STRING(v);
        if (len == 0 || len > max_bytes || s[0] == '\n' || s[len - 1] == '\n')
            Py_RETURN_NONE;
        total += len;
    }
    if (total >= INT32_MAX)
        Py_RETURN_NONE;
    PyObject *block = PyBytes_FromStringAndSize(NULL, total);
    if (!block)
        return NULL;
    buf_t lines = {0};
    int bad = 0, failed = 0;
    char *out = PyBytes_AS_STRING(block);
    Py_BEGIN_ALLOW_THREADS
    char *w = out;
    for (Py_ssize_t i = 0; i < n && !bad && !failed; i++) {
        PyObject *v = PyTuple_GET_ITEM(seq, i); /* the tuple keeps every value alive */
        Py_ssize_t len = PyBytes_GET_SIZE(v);
        const char *s = PyBytes_AS_STRING(v), *e = s + len;
        int32_t msg = (int32_t)i;
        if (i)
            *w++ = '\n';
        memcpy(w, s, (size_t)len);
        w += len;
        if (buf_put(&lines, &msg, sizeof msg))
            failed = 1;
        for (const char *q = s; (q = memchr(q, '\n', (size_t)(e - q))) != NULL; q++) {
            if (q[1] == '\n') { /* an empty line (a trailing '\n' was refused above) */
                bad = 1;
                break;
            }
            if (buf_put(&lines, &msg, sizeof msg)) {
                failed = 1;
                break;
            }
        }
    }
    Py_END_ALLOW_THREADS
    PyObject *result = NULL;
    if (failed)
        PyErr_NoMemory();
    else if (bad)
        result = Py_NewRef(Py_None);
    else
        result = Py_BuildValue("(ON)", block, as_bytes(&lines));
    Py_DECREF(block);
    free(lines.p);
    return result;
}

/*
 * count_lines(block: bytes) -> int: the number of '\n' in ``block`` (memchr, no allocation;
 * the GIL is released).
 */
static PyObject *count_lines(PyObject *self, PyObject *args) {
    Py_buffer block;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*", &block))
        return NULL;
    Py_ssize_t n = 0;
    Py_BEGIN_ALLOW_THREADS
    const char *p = block.buf, *e = p + block.len;
    while (p < e && (p = memchr(p, '\n', (size_t)(e - p))) != NULL) {
        n++;
        p++;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&block);
    return PyLong_FromSsize_t(n);
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(block, names, kinds) -> (rows, line_of_row, bad_lines, records, columns) | None"},
    {"join_lines", join_lines, METH_VARARGS,
     "join_lines(values, max_bytes) -> (block, message_of_line) | None"},
    {"count_lines", count_lines, METH_VARARGS, "count_lines(block) -> number of newlines"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_flatjson", "Fast decoder for flat NDJSON flow records.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__flatjson(void) {
#ifdef __GLIBC__
    if (!c_locale)
        c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
#endif
    return PyModule_Create(&module);
}
