/*
 * A fake libnvidia-ml.so.1 for gpumon's tests: the real pynvml (nvidia-ml-py) loads it through
 * LD_LIBRARY_PATH and calls it exactly as it calls NVIDIA's library.
 *
 * Its whole state is a JSON file named by $FAKE_NVML_STATE, re-read whenever the file changes
 * (stat on every call: inode, size, mtime), so a test can change GPUs, processes and faults
 * while a daemon runs. tests/harness/fakenvml.py writes that file; its docstring is the state
 * reference. In short:
 *
 *   {"driver_version": "535.154.05", "nvml_version": "12.535.154.05",
 *    "cuda_driver_version": 12020,
 *    "errors": {"nvmlInitWithFlags": 9},      function -> NVML return code, for every GPU
 *    "hang": ["nvmlDeviceGetCount_v2"],       functions that block while listed here
 *    "process_info_v3_bytes": 24,             32: the _v3 process queries write early-R535
 *                                             32-byte entries (usedGpuCcProtectedMemory)
 *    "gpus": [{"uuid": "GPU-...", "name": "...", "pci_bus_id": "00000000:3B:00.0",
 *              "utilization_gpu": 37, "utilization_memory": 12,
 *              "memory_total": 85899345920, "memory_used": 1073741824, "memory_reserved": 0,
 *              "temperature": 61, "power_usage_mw": 123000, "power_limit_mw": 300000,
 *              "throttle_reasons": 0, "fan_speed": 30,
 *              "compute_processes": [{"pid": 1234, "used_memory": 1073741824}],
 *              "graphics_processes": [],
 *              "lost": false, "errors": {...}, "hang": [...]}]}
 *
 * A value that is absent or null makes its getter return NVML_ERROR_NOT_SUPPORTED, as a real
 * driver does for a sensor the board lacks. "lost": true makes every call on that GPU return
 * NVML_ERROR_GPU_IS_LOST (handle lookup included only when "errors" names it). A "hang" entry
 * blocks the call until the entry is removed from the file (re-checked every 20 ms) or
 * $FAKE_NVML_MAX_HANG_S seconds pass (default 300), then the call completes normally.
 *
 * Functions an old driver lacks are really absent: fakenvml.py links variants with a version
 * script that hides the named symbols, so pynvml's getattr() fails as it does on such drivers.
 *
 * $FAKE_NVML_LOG, when set, names a file that gets one line per call: "<function> <gpu index>"
 * (-1 for calls not about a GPU), so tests can check which fallbacks ran.
 *
 * Build: gcc -shared -fPIC -O2 -o libnvidia-ml.so.1 fake_nvml.c -lpthread. No other libraries.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- NVML's types and codes (the subset pynvml uses for what we export) ------------------- */

typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

typedef struct {
    char busIdLegacy[16];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

#define NVML_MEMORY_V2_VERSION (unsigned int)(sizeof(nvmlMemory_v2_t) | (2 << 24))

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
} nvmlProcessInfo_v1_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_v2_t; /* also nvmlProcessInfo_t, the layout of the _v3 functions */

/* What the _v3 functions of early R535 drivers (CUDA 12.2's first nvml.h) wrote instead: the
 * state's "process_info_v3_bytes": 32 selects it. */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
    unsigned long long usedGpuCcProtectedMemory;
} nvmlProcessInfo_v3_cc_t;

#define MAX_GPUS 64
#define MAX_PROCS 256
#define NOT_AVAILABLE_ULL 0xFFFFFFFFFFFFFFFFULL

/* ---- a small JSON reader ------------------------------------------------------------------- */

enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct jv {
    int type;
    double num; /* J_NUM, J_BOOL (0/1) */
    char *str;  /* J_STR */
    size_t n;   /* J_ARR, J_OBJ */
    struct jv **items;
    char **keys; /* J_OBJ */
} jv;

typedef struct {
    const char *p;
    const char *end;
    const char *err;
} jparser;

static void jfree(jv *v) {
    if (!v) return;
    free(v->str);
    for (size_t i = 0; i < v->n; i++) {
        jfree(v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v);
}

static void jskip(jparser *ps) {
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static jv *jnew(int type) {
    jv *v = calloc(1, sizeof(jv));
    if (v) v->type = type;
    return v;
}

static int jpush(jv *v, jv *item, char *key) {
    jv **items = realloc(v->items, (v->n + 1) * sizeof(jv *));
    if (!items) return 0;
    v->items = items;
    if (v->type == J_OBJ) {
        char **keys = realloc(v->keys, (v->n + 1) * sizeof(char *));
        if (!keys) return 0;
        v->keys = keys;
        v->keys[v->n] = key;
    }
    v->items[v->n++] = item;
    return 1;
}

static void utf8_put(char **out, unsigned cp) {
    char *o = *out;
    if (cp < 0x80) {
        *o++ = (char)cp;
    } else if (cp < 0x800) {
        *o++ = (char)(0xC0 | (cp >> 6));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *o++ = (char)(0xE0 | (cp >> 12));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (char)(0xF0 | (cp >> 18));
        *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    }
    *out = o;
}

static int hex4(const char *p, unsigned *cp) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *cp = v;
    return 1;
}

static char *jstring(jparser *ps) {
    /* ps->p is at the opening quote. Escapes never grow the text, so len+1 bytes suffice. */
    const char *start = ++ps->p;
    while (ps->p < ps->end && *ps->p != '"') ps->p += (*ps->p == '\\') ? 2 : 1;
    if (ps->p >= ps->end) {
        ps->err = "unterminated string";
        return NULL;
    }
    char *out = malloc((size_t)(ps->p - start) + 1), *o = out;
    if (!out) return NULL;
    for (const char *s = start; s < ps->p; s++) {
        if (*s != '\\') {
            *o++ = *s;
            continue;
        }
        s++;
        switch (*s) {
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'r': *o++ = '\r'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'u': {
            unsigned cp;
            if (s + 4 >= ps->p || !hex4(s + 1, &cp)) {
                ps->err = "bad \\u escape";
                free(out);
                return NULL;
            }
            s += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && s + 6 < ps->p && s[1] == '\\' && s[2] == 'u') {
                unsigned lo;
                if (hex4(s + 3, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    s += 6;
                }
            }
            utf8_put(&o, cp);
            break;
        }
        default: *o++ = *s; /* \" \\ \/ */
        }
    }
    *o = 0;
    ps->p++; /* closing quote */
    return out;
}

static jv *jvalue(jparser *ps, int depth) {
    jskip(ps);
    if (ps->p >= ps->end) {
        ps->err = "unexpected end of input";
        return NULL;
    }
    if (depth > 64) {
        ps->err = "nested too deeply";
        return NULL;
    }
    char c = *ps->p;
    if (c == '{' || c == '[') {
        jv *v = jnew(c == '{' ? J_OBJ : J_ARR);
        char close = c == '{' ? '}' : ']';
        ps->p++;
        jskip(ps);
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            return v;
        }
        for (;;) {
            char *key = NULL;
            jskip(ps);
            if (v->type == J_OBJ) {
                if (ps->p >= ps->end || *ps->p != '"') {
                    ps->err = "expected a key";
                    jfree(v);
                    return NULL;
                }
                key = jstring(ps);
                jskip(ps);
                if (!key || ps->p >= ps->end || *ps->p != ':') {
                    if (!ps->err) ps->err = "expected ':'";
                    free(key);
                    jfree(v);
                    return NULL;
                }
                ps->p++;
            }
            jv *item = jvalue(ps, depth + 1);
            if (!item || !jpush(v, item, key)) {
                free(key);
                jfree(item);
                jfree(v);
                return NULL;
            }
            jskip(ps);
            if (ps->p < ps->end && *ps->p == ',') {
                ps->p++;
                continue;
            }
            if (ps->p < ps->end && *ps->p == close) {
                ps->p++;
                return v;
            }
            ps->err = "expected ',' or a closing bracket";
            jfree(v);
            return NULL;
        }
    }
    if (c == '"') {
        char *s = jstring(ps);
        if (!s) return NULL;
        jv *v = jnew(J_STR);
        v->str = s;
        return v;
    }
    if (strncmp(ps->p, "true", 4) == 0 || strncmp(ps->p, "false", 5) == 0) {
        jv *v = jnew(J_BOOL);
        v->num = c == 't';
        ps->p += c == 't' ? 4 : 5;
        return v;
    }
    if (strncmp(ps->p, "null", 4) == 0) {
        ps->p += 4;
        return jnew(J_NULL);
    }
    char *after;
    double num = strtod(ps->p, &after);
    if (after == ps->p) {
        ps->err = "unexpected character";
        return NULL;
    }
    ps->p = after;
    jv *v = jnew(J_NUM);
    v->num = num;
    return v;
}

static jv *jget(const jv *obj, const char *key) {
    if (!obj || obj->type != J_OBJ) return NULL;
    for (size_t i = 0; i < obj->n; i++)
        if (strcmp(obj->keys[i], key) == 0) return obj->items[i];
    return NULL;
}

static int jnum(const jv *obj, const char *key, double *out) {
    const jv *v = jget(obj, key);
    if (!v || (v->type != J_NUM && v->type != J_BOOL)) return 0;
    *out = v->num;
    return 1;
}

static const char *jstr(const jv *obj, const char *key) {
    const jv *v = jget(obj, key);
    return v && v->type == J_STR ? v->str : NULL;
}

static int jlist_has(const jv *list, const char *name) {
    if (!list || list->type != J_ARR) return 0;
    for (size_t i = 0; i < list->n; i++)
        if (list->items[i]->type == J_STR && strcmp(list->items[i]->str, name) == 0) return 1;
    return 0;
}

/* ---- state: the parsed file, re-read when it changes --------------------------------------- */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static jv *state;
static struct stat state_stat;
static int state_loaded;
static int init_count;
/* Handles are addresses in this array: stable, and a stale one is detectable. */
static char handle_slots[MAX_GPUS];

static void complain(const char *what, const char *path) {
    fprintf(stderr, "fake_nvml: %s: %s\n", path ? path : "$FAKE_NVML_STATE", what);
}

/* Called with the lock held. Returns 0 when no usable state exists. */
static int refresh_state(void) {
    const char *path = getenv("FAKE_NVML_STATE");
    struct stat st;
    if (!path || !*path) {
        complain("not set: the fake NVML library needs a state file", NULL);
        return 0;
    }
    if (stat(path, &st) != 0) {
        complain(strerror(errno), path);
        return 0;
    }
    if (state_loaded && st.st_ino == state_stat.st_ino && st.st_size == state_stat.st_size &&
        st.st_mtim.tv_sec == state_stat.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == state_stat.st_mtim.tv_nsec)
        return state != NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        complain(strerror(errno), path);
        return 0;
    }
    char *text = malloc((size_t)st.st_size + 1);
    size_t len = text ? fread(text, 1, (size_t)st.st_size, f) : 0;
    fclose(f);
    if (!text) return 0;
    text[len] = 0;
    jparser ps = {text, text + len, NULL};
    jv *parsed = jvalue(&ps, 0);
    free(text);
    if (!parsed || parsed->type != J_OBJ) {
        complain(ps.err ? ps.err : "the state must be a JSON object", path);
        jfree(parsed);
        return 0;
    }
    jfree(state);
    state = parsed;
    state_stat = st;
    state_loaded = 1;
    return 1;
}

static const jv *gpus(void) {
    const jv *g = jget(state, "gpus");
    return g && g->type == J_ARR ? g : NULL;
}

static size_t gpu_count(void) {
    const jv *g = gpus();
    size_t n = g ? g->n : 0;
    return n > MAX_GPUS ? MAX_GPUS : n;
}

static const jv *gpu_at(int index) {
    if (index < 0 || (size_t)index >= gpu_count()) return NULL;
    return gpus()->items[index];
}

static void log_call(const char *fn, int gpu) {
    const char *path = getenv("FAKE_NVML_LOG");
    if (!path || !*path) return;
    char line[160];
    int n = snprintf(line, sizeof line, "%s %d\n", fn, gpu);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;
    if (write(fd, line, (size_t)n) < 0) { /* a log for tests; nothing to do */
    }
    close(fd);
}

static int hang_listed(const char *fn, int gpu) {
    if (jlist_has(jget(state, "hang"), fn)) return 1;
    return gpu >= 0 && jlist_has(jget(gpu_at(gpu), "hang"), fn);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Called with the lock held; returns with it held. Blocks while the state lists the call. */
static void maybe_hang(const char *fn, int gpu) {
    if (!hang_listed(fn, gpu)) return;
    const char *limit_env = getenv("FAKE_NVML_MAX_HANG_S");
    double limit = limit_env && *limit_env ? atof(limit_env) : 300.0;
    double until = now_s() + limit;
    while (now_s() < until) {
        pthread_mutex_unlock(&lock);
        struct timespec pause = {0, 20 * 1000 * 1000};
        nanosleep(&pause, NULL);
        pthread_mutex_lock(&lock);
        if (!refresh_state() || !hang_listed(fn, gpu)) return;
    }
}

static int injected_error(const char *fn, int gpu) {
    double code;
    if (gpu >= 0 && jnum(jget(gpu_at(gpu), "errors"), fn, &code)) return (int)code;
    if (jnum(jget(state, "errors"), fn, &code)) return (int)code;
    return NVML_SUCCESS;
}

/*
 * The common prologue of every call: lock, log, re-read the state, hang if told to, then the
 * injected error (if any). Returns NVML_SUCCESS with the lock held, or an error without it.
 */
static nvmlReturn_t enter(const char *fn, int gpu, int needs_init) {
    pthread_mutex_lock(&lock);
    log_call(fn, gpu);
    if (!refresh_state()) {
        pthread_mutex_unlock(&lock);
        return NVML_ERROR_UNKNOWN;
    }
    if (needs_init && init_count <= 0) {
        pthread_mutex_unlock(&lock);
        return NVML_ERROR_UNINITIALIZED;
    }
    maybe_hang(fn, gpu);
    if (!state) {
        pthread_mutex_unlock(&lock);
        return NVML_ERROR_UNKNOWN;
    }
    int err = injected_error(fn, gpu);
    if (err != NVML_SUCCESS) {
        pthread_mutex_unlock(&lock);
        return err;
    }
    return NVML_SUCCESS;
}

static int handle_index(nvmlDevice_t device) {
    const char *p = (const char *)device;
    if (p < handle_slots || p >= handle_slots + MAX_GPUS) return -1;
    return (int)(p - handle_slots);
}

/* The prologue of calls on a GPU; on success *g is the GPU's state and the lock is held. */
static nvmlReturn_t enter_gpu(const char *fn, nvmlDevice_t device, const jv **g) {
    int index = handle_index(device);
    if (index < 0) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t ret = enter(fn, index, 1);
    if (ret != NVML_SUCCESS) return ret;
    *g = gpu_at(index);
    if (!*g) { /* the GPU is gone from the state since the handle was made */
        pthread_mutex_unlock(&lock);
        return NVML_ERROR_GPU_IS_LOST;
    }
    const jv *lost = jget(*g, "lost");
    if (lost && lost->type == J_BOOL && lost->num) {
        pthread_mutex_unlock(&lock);
        return NVML_ERROR_GPU_IS_LOST;
    }
    return NVML_SUCCESS;
}

static nvmlReturn_t leave(nvmlReturn_t ret) {
    pthread_mutex_unlock(&lock);
    return ret;
}

static nvmlReturn_t copy_string(const char *value, char *buf, unsigned int length) {
    if (!value) return NVML_ERROR_NOT_SUPPORTED;
    if (!buf) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(value) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(buf, value);
    return NVML_SUCCESS;
}

/* A numeric field of GPU g into *out, or NOT_SUPPORTED when absent or null. */
static nvmlReturn_t gpu_uint(const jv *g, const char *key, unsigned int *out) {
    double v;
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (!jnum(g, key, &v)) return NVML_ERROR_NOT_SUPPORTED;
    *out = (unsigned int)v;
    return NVML_SUCCESS;
}

/* ---- initialisation and system queries ----------------------------------------------------- */

static nvmlReturn_t do_init(const char *fn) {
    nvmlReturn_t ret = enter(fn, -1, 0);
    if (ret != NVML_SUCCESS) return ret;
    init_count++;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlInit(void) { return do_init("nvmlInit"); }
nvmlReturn_t nvmlInit_v2(void) { return do_init("nvmlInit_v2"); }
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return do_init("nvmlInitWithFlags");
}

nvmlReturn_t nvmlShutdown(void) {
    nvmlReturn_t ret = enter("nvmlShutdown", -1, 1);
    if (ret != NVML_SUCCESS) return ret;
    init_count--;
    return leave(NVML_SUCCESS);
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    default: return "Unknown Error (fake NVML)";
    }
}

static nvmlReturn_t system_string(const char *fn, const char *key, char *buf, unsigned length) {
    nvmlReturn_t ret = enter(fn, -1, 1);
    if (ret != NVML_SUCCESS) return ret;
    return leave(copy_string(jstr(state, key), buf, length));
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    return system_string("nvmlSystemGetDriverVersion", "driver_version", version, length);
}

nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    return system_string("nvmlSystemGetNVMLVersion", "nvml_version", version, length);
}

static nvmlReturn_t cuda_version(const char *fn, int *out) {
    nvmlReturn_t ret = enter(fn, -1, 1);
    if (ret != NVML_SUCCESS) return ret;
    double v;
    if (!out) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!jnum(state, "cuda_driver_version", &v)) return leave(NVML_ERROR_NOT_SUPPORTED);
    *out = (int)v;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) {
    return cuda_version("nvmlSystemGetCudaDriverVersion", v);
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) {
    return cuda_version("nvmlSystemGetCudaDriverVersion_v2", v);
}

static nvmlReturn_t device_count(const char *fn, unsigned int *count) {
    nvmlReturn_t ret = enter(fn, -1, 1);
    if (ret != NVML_SUCCESS) return ret;
    if (!count) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *count = (unsigned int)gpu_count();
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetCount(unsigned int *c) { return device_count("nvmlDeviceGetCount", c); }
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *c) {
    return device_count("nvmlDeviceGetCount_v2", c);
}

/* ---- handles ------------------------------------------------------------------------------- */

static nvmlReturn_t handle_by_index(const char *fn, unsigned int index, nvmlDevice_t *device) {
    nvmlReturn_t ret = enter(fn, index < MAX_GPUS ? (int)index : -1, 1);
    if (ret != NVML_SUCCESS) return ret;
    if (!device || index >= gpu_count()) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *device = (nvmlDevice_t)&handle_slots[index];
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int i, nvmlDevice_t *d) {
    return handle_by_index("nvmlDeviceGetHandleByIndex", i, d);
}
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) {
    return handle_by_index("nvmlDeviceGetHandleByIndex_v2", i, d);
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    nvmlReturn_t ret = enter("nvmlDeviceGetHandleByUUID", -1, 1);
    if (ret != NVML_SUCCESS) return ret;
    if (!uuid || !device) return leave(NVML_ERROR_INVALID_ARGUMENT);
    for (size_t i = 0; i < gpu_count(); i++) {
        const char *u = jstr(gpu_at((int)i), "uuid");
        if (u && strcmp(u, uuid) == 0) {
            *device = (nvmlDevice_t)&handle_slots[i];
            return leave(NVML_SUCCESS);
        }
    }
    return leave(6 /* NVML_ERROR_NOT_FOUND */);
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    const jv *g;
    nvmlReturn_t ret = enter_gpu("nvmlDeviceGetIndex", device, &g);
    if (ret != NVML_SUCCESS) return ret;
    if (!index) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *index = (unsigned int)handle_index(device);
    return leave(NVML_SUCCESS);
}

/* ---- per-GPU queries ----------------------------------------------------------------------- */

static nvmlReturn_t gpu_string(const char *fn, nvmlDevice_t d, const char *key, char *buf,
                               unsigned int length) {
    const jv *g;
    nvmlReturn_t ret = enter_gpu(fn, d, &g);
    if (ret != NVML_SUCCESS) return ret;
    return leave(copy_string(jstr(g, key), buf, length));
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int length) {
    return gpu_string("nvmlDeviceGetUUID", d, "uuid", uuid, length);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int length) {
    return gpu_string("nvmlDeviceGetName", d, "name", name, length);
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *pci) {
    const jv *g;
    nvmlReturn_t ret = enter_gpu("nvmlDeviceGetPciInfo_v3", d, &g);
    if (ret != NVML_SUCCESS) return ret;
    const char *bus_id = jstr(g, "pci_bus_id");
    if (!pci) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!bus_id) return leave(NVML_ERROR_NOT_SUPPORTED);
    memset(pci, 0, sizeof *pci);
    snprintf(pci->busId, sizeof pci->busId, "%s", bus_id);
    /* The legacy field holds the short form, as the real library fills it. */
    unsigned domain = 0, bus = 0, dev = 0, fn = 0;
    if (sscanf(bus_id, "%x:%x:%x.%x", &domain, &bus, &dev, &fn) == 4) {
        pci->domain = domain;
        pci->bus = bus;
        pci->device = dev;
        snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04x:%02x:%02x.%x", domain & 0xffff,
                 bus, dev, fn);
    }
    double id;
    if (jnum(g, "pci_device_id", &id)) pci->pciDeviceId = (unsigned int)id;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *util) {
    const jv *g;
    nvmlReturn_t ret = enter_gpu("nvmlDeviceGetUtilizationRates", d, &g);
    if (ret != NVML_SUCCESS) return ret;
    double gpu, mem;
    if (!util) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!jnum(g, "utilization_gpu", &gpu) || !jnum(g, "utilization_memory", &mem))
        return leave(NVML_ERROR_NOT_SUPPORTED);
    util->gpu = (unsigned int)gpu;
    util->memory = (unsigned int)mem;
    return leave(NVML_SUCCESS);
}

/* total/used/reserved of GPU g; NOT_SUPPORTED when total or used is absent. */
static nvmlReturn_t memory_of(const jv *g, unsigned long long *total, unsigned long long *used,
                              unsigned long long *reserved) {
    double t, u, r = 0;
    if (!jnum(g, "memory_total", &t) || !jnum(g, "memory_used", &u))
        return NVML_ERROR_NOT_SUPPORTED;
    jnum(g, "memory_reserved", &r);
    *total = (unsigned long long)t;
    *used = (unsigned long long)u;
    *reserved = (unsigned long long)r;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *memory) {
    const jv *g;
    nvmlReturn_t ret = enter_gpu("nvmlDeviceGetMemoryInfo", d, &g);
    if (ret != NVML_SUCCESS) return ret;
    unsigned long long total, used, reserved;
    if (!memory) return leave(NVML_ERROR_INVALID_ARGUMENT);
    ret = memory_of(g, &total, &used, &reserved);
    if (ret != NVML_SUCCESS) return leave(ret);
    /* v1 counts the driver's reservation as used, as real drivers do. */
    memory->total = total;
    memory->used = used + reserved;
    memory->free = total > used + reserved ? total - used - reserved : 0;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *memory) {
    const jv *g;
    nvmlReturn_t ret = enter_gpu("nvmlDeviceGetMemoryInfo_v2", d, &g);
    if (ret != NVML_SUCCESS) return ret;
    unsigned long long total, used, reserved;
    if (!memory) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (memory->version != NVML_MEMORY_V2_VERSION)
        return leave(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    ret = memory_of(g, &total, &used, &reserved);
    if (ret != NVML_SUCCESS) return leave(ret);
    memory->total = total;
    memory->reserved = reserved;
    memory->used = used;
    memory->free = total > used + reserved ? total - used - reserved : 0;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int *temp) {
    const jv *g;
    nvmlReturn_t ret = enter_gpu("nvmlDeviceGetTemperature", d, &g);
    if (ret != NVML_SUCCESS) return ret;
    if (sensor != 0) return leave(NVML_ERROR_INVALID_ARGUMENT); /* only NVML_TEMPERATURE_GPU */
    return leave(gpu_uint(g, "temperature", temp));
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int *mw) {
    const jv *g;
    nvmlReturn_t ret = enter_gpu("nvmlDeviceGetPowerUsage", d, &g);
    if (ret != NVML_SUCCESS) return ret;
    return leave(gpu_uint(g, "power_usage_mw", mw));
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t d, unsigned int *mw) {
    const jv *g;
    nvmlReturn_t ret = enter_gpu("nvmlDeviceGetEnforcedPowerLimit", d, &g);
    if (ret != NVML_SUCCESS) return ret;
    return leave(gpu_uint(g, "power_limit_mw", mw));
}

nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t d, unsigned int *mw) {
    const jv *g;
    nvmlReturn_t ret = enter_gpu("nvmlDeviceGetPowerManagementLimit", d, &g);
    if (ret != NVML_SUCCESS) return ret;
    return leave(gpu_uint(g, "power_limit_mw", mw));
}

nvmlReturn_t nvmlDeviceGetFanSpeed(nvmlDevice_t d, unsigned int *speed) {
    const jv *g;
    nvmlReturn_t ret = enter_gpu("nvmlDeviceGetFanSpeed", d, &g);
    if (ret != NVML_SUCCESS) return ret;
    return leave(gpu_uint(g, "fan_speed", speed));
}

static nvmlReturn_t codec_util(const char *fn, nvmlDevice_t d, const char *key, unsigned int *u,
                               unsigned int *period_us) {
    const jv *g;
    nvmlReturn_t ret = enter_gpu(fn, d, &g);
    if (ret != NVML_SUCCESS) return ret;
    if (!period_us) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *period_us = 1000000;
    return leave(gpu_uint(g, key, u));
}

nvmlReturn_t nvmlDeviceGetEncoderUtilization(nvmlDevice_t d, unsigned int *u, unsigned int *p) {
    return codec_util("nvmlDeviceGetEncoderUtilization", d, "encoder_utilization", u, p);
}
nvmlReturn_t nvmlDeviceGetDecoderUtilization(nvmlDevice_t d, unsigned int *u, unsigned int *p) {
    return codec_util("nvmlDeviceGetDecoderUtilization", d, "decoder_utilization", u, p);
}

static nvmlReturn_t throttle(const char *fn, nvmlDevice_t d, unsigned long long *reasons) {
    const jv *g;
    nvmlReturn_t ret = enter_gpu(fn, d, &g);
    if (ret != NVML_SUCCESS) return ret;
    double v;
    if (!reasons) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!jnum(g, "throttle_reasons", &v)) return leave(NVML_ERROR_NOT_SUPPORTED);
    *reasons = (unsigned long long)v;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t d, unsigned long long *r) {
    return throttle("nvmlDeviceGetCurrentClocksThrottleReasons", d, r);
}
nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t d, unsigned long long *r) {
    return throttle("nvmlDeviceGetCurrentClocksEventReasons", d, r);
}

/*
 * The running-process queries, all versions (1, 2, 3): fill up to *count entries (v1 entries
 * lack the instance ids; v3 ones are v2's, or 32-byte ones when the state says
 * "process_info_v3_bytes": 32). NVML's protocol: too small a buffer gives INSUFFICIENT_SIZE with
 * the needed count; no processes gives SUCCESS with 0.
 */
static nvmlReturn_t processes(const char *fn, nvmlDevice_t d, const char *key,
                              unsigned int *count, void *infos, int version) {
    const jv *g;
    nvmlReturn_t ret = enter_gpu(fn, d, &g);
    if (ret != NVML_SUCCESS) return ret;
    if (!count) return leave(NVML_ERROR_INVALID_ARGUMENT);
    const jv *list = jget(g, key);
    size_t n = list && list->type == J_ARR ? list->n : 0;
    if (n > MAX_PROCS) n = MAX_PROCS;
    double entry_bytes = 0;
    int cc_layout = jnum(state, "process_info_v3_bytes", &entry_bytes) && entry_bytes == 32;
    if (*count < n) {
        *count = (unsigned int)n;
        return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    if (n > 0 && !infos) return leave(NVML_ERROR_INVALID_ARGUMENT);
    for (size_t i = 0; i < n; i++) {
        const jv *p = list->items[i];
        double pid = 0, mem;
        unsigned long long used = NOT_AVAILABLE_ULL;
        jnum(p, "pid", &pid);
        if (jnum(p, "used_memory", &mem)) used = (unsigned long long)mem;
        if (version == 3 && cc_layout) {
            nvmlProcessInfo_v3_cc_t *out = (nvmlProcessInfo_v3_cc_t *)infos + i;
            out->pid = (unsigned int)pid;
            out->usedGpuMemory = used;
            out->gpuInstanceId = 0xFFFFFFFF;
            out->computeInstanceId = 0xFFFFFFFF;
            out->usedGpuCcProtectedMemory = 0;
        } else if (version == 1) {
            nvmlProcessInfo_v1_t *out = (nvmlProcessInfo_v1_t *)infos + i;
            out->pid = (unsigned int)pid;
            out->usedGpuMemory = used;
        } else {
            nvmlProcessInfo_v2_t *out = (nvmlProcessInfo_v2_t *)infos + i;
            out->pid = (unsigned int)pid;
            out->usedGpuMemory = used;
            out->gpuInstanceId = 0xFFFFFFFF;
            out->computeInstanceId = 0xFFFFFFFF;
        }
    }
    *count = (unsigned int)n;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t d, unsigned int *c, void *i) {
    return processes("nvmlDeviceGetComputeRunningProcesses", d, "compute_processes", c, i, 1);
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *c, void *i) {
    return processes("nvmlDeviceGetComputeRunningProcesses_v2", d, "compute_processes", c, i, 2);
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *c, void *i) {
    return processes("nvmlDeviceGetComputeRunningProcesses_v3", d, "compute_processes", c, i, 3);
}
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses(nvmlDevice_t d, unsigned int *c, void *i) {
    return processes("nvmlDeviceGetGraphicsRunningProcesses", d, "graphics_processes", c, i, 1);
}
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t d, unsigned int *c, void *i) {
    return processes("nvmlDeviceGetGraphicsRunningProcesses_v2", d, "graphics_processes", c, i, 2);
}
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t d, unsigned int *c, void *i) {
    return processes("nvmlDeviceGetGraphicsRunningProcesses_v3", d, "graphics_processes", c, i, 3);
}
