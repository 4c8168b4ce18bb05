/*
 * shoal.envs._native: steps many C game instances in place over buffers that Python owns.
 *
 * Python allocates the NumPy arrays once and hands them to VecEnv; we hold their buffer
 * exports for the lifetime of the object, so each step touches memory NumPy already sees and
 * nothing is copied. Only Python.h (the buffer protocol) is used: no NumPy C API, so the
 * extension does not depend on the NumPy version it was built against.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "games.h"

#define NUM_GAMES ((int)(sizeof(SHOAL_GAMES) / sizeof(SHOAL_GAMES[0])))
#define MAX_ENVS (1 << 24)
#define MAX_THREADS 256
#define RENDER_BUF (1 << 16)
/* Polls before sleeping on a condition variable: consecutive steps arrive a few microseconds
 * apart, far less than a futex sleep and wake-up costs, while a longer pause (the trainer's
 * inference) still ends in a real sleep. */
#ifndef SHOAL_SPIN_POLLS
#define SHOAL_SPIN_POLLS 2000
#endif

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

enum { BUF_OBS, BUF_FINAL_OBS, BUF_ACTIONS, BUF_REWARDS, BUF_TERMINALS, BUF_TRUNCATIONS, NUM_BUFS };
static const char *const BUF_NAMES[NUM_BUFS] = {"obs", "final_obs", "actions", "rewards", "terminals",
                                                "truncations"};

enum { TASK_STEP, TASK_RESET };

typedef struct VecEnvObject VecEnvObject;

typedef struct {
    VecEnvObject *env;
    int index;
} Worker;

struct VecEnvObject {
    PyObject_HEAD
    const GameDef *game;
    GameInfo info;
    int num_envs;
    int num_agents;
    double options[SHOAL_MAX_OPTIONS];
    char *states;
    size_t state_stride;
    EnvIO *io;
    Py_buffer bufs[NUM_BUFS];
    int bufs_held;
    int envs_initialized;
    int busy;   /* set (with the GIL held) while the GIL is released around a step */
    int closed;
    /* Persistent pool: workers 1..num_threads-1 each own a contiguous chunk of envs; the
     * calling thread runs chunk 0, so one thread means no pool at all. */
    int num_threads;
    int pool_started;
    int pool_size;
    pid_t pool_pid;   /* a forked child has no workers: it steps every chunk itself */
    pthread_t *threads;
    Worker *workers;
    pthread_mutex_t mu;
    pthread_cond_t start_cv;
    pthread_cond_t done_cv;
    _Atomic uint64_t generation;
    _Atomic int pending;
    _Atomic int stop;
    _Atomic int task;
};

static const GameDef *find_game(const char *name) {
    for (int i = 0; i < NUM_GAMES; i++) {
        if (strcmp(SHOAL_GAMES[i]->name, name) == 0) return SHOAL_GAMES[i];
    }
    return NULL;
}

static PyObject *unknown_game_error(const char *name) {
    PyObject *names = PyUnicode_FromString("");
    for (int i = 0; i < NUM_GAMES && names; i++) {
        PyObject *joined = PyUnicode_FromFormat("%U%s%s", names, i ? ", " : "", SHOAL_GAMES[i]->name);
        Py_SETREF(names, joined);
    }
    if (names) {
        PyErr_Format(PyExc_ValueError, "unknown native env '%s'; expected one of: %U", name, names);
        Py_DECREF(names);
    }
    return NULL;
}

/* Validate option values (a sequence in spec order) into `out`; raise and return -1 on error. */
static int parse_options(const GameDef *game, PyObject *seq, double *out) {
    PyObject *fast = PySequence_Fast(seq, "options must be a sequence of numbers in spec order");
    if (!fast) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n != game->num_options) {
        PyErr_Format(PyExc_ValueError, "env '%s' takes %d option values, got %zd", game->name,
                     game->num_options, n);
        Py_DECREF(fast);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const OptionSpec *spec = &game->options[i];
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        double v = PyFloat_AsDouble(item);
        if (v == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "option '%s' of env '%s' must be a number, got %R", spec->name,
                         game->name, item);
            Py_DECREF(fast);
            return -1;
        }
        if (!(v >= spec->min_value && v <= spec->max_value)) {
            PyObject *given = PyFloat_FromDouble(v), *lo = PyFloat_FromDouble(spec->min_value),
                     *hi = PyFloat_FromDouble(spec->max_value);
            if (given && lo && hi)
                PyErr_Format(PyExc_ValueError, "option '%s' of env '%s' must be in [%R, %R], got %R",
                             spec->name, game->name, lo, hi, given);
            Py_XDECREF(given);
            Py_XDECREF(lo);
            Py_XDECREF(hi);
            Py_DECREF(fast);
            return -1;
        }
        if (spec->is_int && v != floor(v)) {
            PyObject *given = PyFloat_FromDouble(v);
            if (given)
                PyErr_Format(PyExc_ValueError, "option '%s' of env '%s' must be a whole number, got %R",
                             spec->name, game->name, given);
            Py_XDECREF(given);
            Py_DECREF(fast);
            return -1;
        }
        out[i] = v;
    }
    Py_DECREF(fast);
    return 0;
}

static int configure_game(const GameDef *game, const double *options, GameInfo *info) {
    char err[512] = {0};
    memset(info, 0, sizeof(*info));
    if (game->configure(info, options, err, sizeof(err)) != 0) {
        PyErr_Format(PyExc_ValueError, "invalid options for env '%s': %s", game->name,
                     err[0] ? err : "rejected by the game");
        return -1;
    }
    if (info->obs_size <= 0 || info->agents_per_env <= 0 || info->num_action_dims <= 0 ||
        info->num_action_dims > SHOAL_MAX_ACTION_DIMS ||
        (info->obs_dtype != SHOAL_FLOAT32 && info->obs_dtype != SHOAL_UINT8)) {
        PyErr_Format(PyExc_RuntimeError, "env '%s' reported an invalid GameInfo", game->name);
        return -1;
    }
    int frames = info->frame_stack > 0 || info->frame_height > 0 || info->frame_width > 0;
    if (frames && (info->obs_dtype != SHOAL_UINT8 || info->frame_stack <= 0 || info->frame_height <= 0 ||
                   info->frame_width <= 0 ||
                   (int64_t)info->frame_stack * info->frame_height * info->frame_width != info->obs_size)) {
        PyErr_Format(PyExc_RuntimeError, "env '%s' reported frames that do not fill its uint8 observation",
                     game->name);
        return -1;
    }
    for (int d = 0; d < info->num_action_dims; d++) {
        if (info->action_nvec[d] <= 0) {
            PyErr_Format(PyExc_RuntimeError, "env '%s' reported action_nvec[%d] = %d", game->name, d,
                         info->action_nvec[d]);
            return -1;
        }
    }
    return 0;
}

static PyObject *info_dict(const GameInfo *info) {
    PyObject *nvec = PyList_New(info->num_action_dims);
    if (!nvec) return NULL;
    for (int d = 0; d < info->num_action_dims; d++) PyList_SET_ITEM(nvec, d, PyLong_FromLong(info->action_nvec[d]));
    PyObject *frame_shape = Py_None;
    Py_INCREF(Py_None);
    if (info->frame_stack > 0) {
        Py_SETREF(frame_shape, Py_BuildValue("(iii)", info->frame_stack, info->frame_height, info->frame_width));
        if (!frame_shape) {
            Py_DECREF(nvec);
            return NULL;
        }
    }
    PyObject *dict = Py_BuildValue("{s:i,s:s,s:d,s:d,s:i,s:N,s:N}", "obs_size", info->obs_size, "obs_dtype",
                                   info->obs_dtype == SHOAL_FLOAT32 ? "float32" : "uint8", "obs_low",
                                   (double)info->obs_low, "obs_high", (double)info->obs_high, "agents_per_env",
                                   info->agents_per_env, "action_nvec", nvec, "frame_shape", frame_shape);
    return dict;
}

/* ---- module functions ---- */

static PyObject *py_games(PyObject *self, PyObject *noargs) {
    PyObject *list = PyList_New(NUM_GAMES);
    if (!list) return NULL;
    for (int i = 0; i < NUM_GAMES; i++) {
        const GameDef *g = SHOAL_GAMES[i];
        PyObject *opts = PyList_New(g->num_options);
        if (!opts) goto fail;
        for (int j = 0; j < g->num_options; j++) {
            const OptionSpec *o = &g->options[j];
            PyObject *od = Py_BuildValue("{s:s,s:d,s:d,s:d,s:O,s:s}", "name", o->name, "default", o->default_value,
                                         "min", o->min_value, "max", o->max_value, "is_int",
                                         o->is_int ? Py_True : Py_False, "help", o->help ? o->help : "");
            if (!od) {
                Py_DECREF(opts);
                goto fail;
            }
            PyList_SET_ITEM(opts, j, od);
        }
        PyObject *d = Py_BuildValue("{s:s,s:s,s:N}", "name", g->name, "description", g->description, "options", opts);
        if (!d) goto fail;
        PyList_SET_ITEM(list, i, d);
    }
    return list;
fail:
    Py_DECREF(list);
    return NULL;
}

static PyObject *py_configure(PyObject *self, PyObject *args) {
    const char *name;
    PyObject *opts;
    if (!PyArg_ParseTuple(args, "sO:configure", &name, &opts)) return NULL;
    const GameDef *game = find_game(name);
    if (!game) return unknown_game_error(name);
    double values[SHOAL_MAX_OPTIONS];
    if (parse_options(game, opts, values) < 0) return NULL;
    GameInfo info;
    if (configure_game(game, values, &info) < 0) return NULL;
    return info_dict(&info);
}

/* ---- the pool ---- */

static void run_chunk(VecEnvObject *v, int task, int chunk) {
    int lo = (int)((int64_t)v->num_envs * chunk / v->num_threads);
    int hi = (int)((int64_t)v->num_envs * (chunk + 1) / v->num_threads);
    const GameDef *g = v->game;
    char *s = v->states + (size_t)lo * v->state_stride;
    if (task == TASK_STEP) {
        void (*step)(void *, EnvIO *) = g->step;
        for (int i = lo; i < hi; i++, s += v->state_stride) step(s, &v->io[i]);
    } else {
        for (int i = lo; i < hi; i++, s += v->state_stride) g->reset(s, &v->io[i]);
    }
}

static void *worker_main(void *arg) {
    Worker *w = (Worker *)arg;
    VecEnvObject *v = w->env;
    uint64_t seen = 0;
    for (;;) {
        for (int i = 0; i < SHOAL_SPIN_POLLS && atomic_load(&v->generation) == seen && !atomic_load(&v->stop); i++)
            cpu_relax();
        if (atomic_load(&v->generation) == seen && !atomic_load(&v->stop)) {
            pthread_mutex_lock(&v->mu);
            while (atomic_load(&v->generation) == seen && !atomic_load(&v->stop))
                pthread_cond_wait(&v->start_cv, &v->mu);
            pthread_mutex_unlock(&v->mu);
        }
        if (atomic_load(&v->stop)) break;
        seen = atomic_load(&v->generation);
        run_chunk(v, atomic_load(&v->task), w->index);
        if (atomic_fetch_sub(&v->pending, 1) == 1) {
            /* Signal under the lock so the caller cannot miss it between its check and wait. */
            pthread_mutex_lock(&v->mu);
            pthread_cond_signal(&v->done_cv);
            pthread_mutex_unlock(&v->mu);
        }
    }
    return NULL;
}

static void run_all(VecEnvObject *v, int task) {
    if (v->num_threads <= 1) {
        run_chunk(v, task, 0);
        return;
    }
    if (getpid() != v->pool_pid) {
        for (int c = 0; c < v->num_threads; c++) run_chunk(v, task, c);
        return;
    }
    atomic_store(&v->task, task);
    atomic_store(&v->pending, v->num_threads - 1);
    pthread_mutex_lock(&v->mu);
    atomic_fetch_add(&v->generation, 1);
    pthread_cond_broadcast(&v->start_cv);
    pthread_mutex_unlock(&v->mu);
    run_chunk(v, task, 0);
    for (int i = 0; i < SHOAL_SPIN_POLLS && atomic_load(&v->pending) > 0; i++) cpu_relax();
    if (atomic_load(&v->pending) > 0) {
        pthread_mutex_lock(&v->mu);
        while (atomic_load(&v->pending) > 0) pthread_cond_wait(&v->done_cv, &v->mu);
        pthread_mutex_unlock(&v->mu);
    }
}

static void stop_pool(VecEnvObject *v) {
    if (!v->pool_started) return;
    if (getpid() != v->pool_pid) {
        /* Forked child: the workers (and the lock's owner) live only in the parent. */
        free(v->threads);
        free(v->workers);
        v->threads = NULL;
        v->workers = NULL;
        v->pool_started = 0;
        v->pool_size = 0;
        return;
    }
    pthread_mutex_lock(&v->mu);
    atomic_store(&v->stop, 1);
    pthread_cond_broadcast(&v->start_cv);
    pthread_mutex_unlock(&v->mu);
    for (int i = 0; i < v->pool_size; i++) pthread_join(v->threads[i], NULL);
    pthread_mutex_destroy(&v->mu);
    pthread_cond_destroy(&v->start_cv);
    pthread_cond_destroy(&v->done_cv);
    free(v->threads);
    free(v->workers);
    v->threads = NULL;
    v->workers = NULL;
    v->pool_started = 0;
    v->pool_size = 0;
}

static int start_pool(VecEnvObject *v) {
    int n = v->num_threads - 1;
    if (n <= 0) return 0;
    if (pthread_mutex_init(&v->mu, NULL) || pthread_cond_init(&v->start_cv, NULL) ||
        pthread_cond_init(&v->done_cv, NULL)) {
        PyErr_SetString(PyExc_RuntimeError, "could not create the thread pool's locks");
        return -1;
    }
    v->threads = calloc((size_t)n, sizeof(pthread_t));
    v->workers = calloc((size_t)n, sizeof(Worker));
    v->pool_started = 1;
    v->pool_size = 0;
    v->pool_pid = getpid();
    if (!v->threads || !v->workers) {
        stop_pool(v);
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < n; i++) {
        v->workers[i].env = v;
        v->workers[i].index = i + 1;
        if (pthread_create(&v->threads[i], NULL, worker_main, &v->workers[i]) != 0) {
            stop_pool(v);
            PyErr_Format(PyExc_RuntimeError, "could not start thread %d of %d", i + 2, v->num_threads);
            return -1;
        }
        v->pool_size = i + 1;
    }
    return 0;
}

/* ---- VecEnv ---- */

static void seed_envs(VecEnvObject *v, uint64_t seed) {
    /* Each env's stream depends only on (seed, env index), so any thread split gives the
     * same trajectories. Two splitmix rounds decorrelate neighbouring indices. */
    for (int i = 0; i < v->num_envs; i++) {
        uint64_t s = seed ^ ((uint64_t)(i + 1) * 0xD1B54A32D192ED03ull);
        uint64_t a = shoal_rand_u64(&s);
        uint64_t b = shoal_rand_u64(&s);
        v->io[i].rng = a ^ (b << 1);
    }
}

static void release_all(VecEnvObject *v) {
    stop_pool(v);
    if (v->envs_initialized && v->game && v->game->close) {
        for (int i = 0; i < v->num_envs; i++) v->game->close(v->states + (size_t)i * v->state_stride);
    }
    v->envs_initialized = 0;
    free(v->states);
    v->states = NULL;
    PyMem_Free(v->io);
    v->io = NULL;
    for (int i = 0; i < v->bufs_held; i++) PyBuffer_Release(&v->bufs[i]);
    v->bufs_held = 0;
}

static char format_char(const Py_buffer *b) {
    const char *f = b->format ? b->format : "B";
    while (*f == '@' || *f == '=' || *f == '<' || *f == '>' || *f == '!') f++;
    if (f[0] && f[1]) return '?';  /* structured or multi-char formats are never valid here */
    return f[0];
}

static int get_buffer(VecEnvObject *v, int which, PyObject *obj, size_t count, size_t itemsize,
                      const char *kinds, const char *dtype_name) {
    Py_buffer *b = &v->bufs[which];
    if (PyObject_GetBuffer(obj, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "buffer '%s' must be a writable C-contiguous %s array, got %s",
                     BUF_NAMES[which], dtype_name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    v->bufs_held = which + 1;
    char fc = format_char(b);
    if ((size_t)b->itemsize != itemsize || !strchr(kinds, fc) || fc == 0) {
        PyErr_Format(PyExc_TypeError, "buffer '%s' must have dtype %s, got format '%s' with itemsize %zd",
                     BUF_NAMES[which], dtype_name, b->format ? b->format : "B", b->itemsize);
        return -1;
    }
    if ((size_t)b->len != count * itemsize) {
        PyErr_Format(PyExc_ValueError, "buffer '%s' must hold %zu elements, got %zd", BUF_NAMES[which], count,
                     b->len / (b->itemsize ? b->itemsize : 1));
        return -1;
    }
    return 0;
}

static int VecEnv_init(VecEnvObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"game", "num_envs", "seed", "options", "num_threads", "obs", "final_obs",
                             "actions", "rewards", "terminals", "truncations", NULL};
    const char *name;
    int num_envs, num_threads;
    PyObject *seed_obj, *opts, *objs[NUM_BUFS];
    if (self->game) {
        PyErr_SetString(PyExc_RuntimeError, "VecEnv is already initialized");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "siOOiOOOOOO:VecEnv", kwlist, &name, &num_envs, &seed_obj, &opts,
                                     &num_threads, &objs[0], &objs[1], &objs[2], &objs[3], &objs[4], &objs[5]))
        return -1;
    const GameDef *game = find_game(name);
    if (!game) {
        unknown_game_error(name);
        return -1;
    }
    if (num_envs < 1 || num_envs > MAX_ENVS) {
        PyErr_Format(PyExc_ValueError, "num_envs must be in [1, %d], got %d", MAX_ENVS, num_envs);
        return -1;
    }
    if (num_threads < 1 || num_threads > MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "num_threads must be in [1, %d], got %d", MAX_THREADS, num_threads);
        return -1;
    }
    if (!PyLong_Check(seed_obj)) {
        PyErr_Format(PyExc_TypeError, "seed must be an int, got %s", Py_TYPE(seed_obj)->tp_name);
        return -1;
    }
    uint64_t seed = (uint64_t)PyLong_AsUnsignedLongLongMask(seed_obj);
    if (PyErr_Occurred()) return -1;
    double values[SHOAL_MAX_OPTIONS];
    if (parse_options(game, opts, values) < 0) return -1;
    GameInfo info;
    if (configure_game(game, values, &info) < 0) return -1;
    size_t agents = (size_t)num_envs * (size_t)info.agents_per_env;
    if (agents > (size_t)INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "too many agents");
        return -1;
    }
    size_t obs_item = info.obs_dtype == SHOAL_FLOAT32 ? 4 : 1;
    const char *obs_kinds = info.obs_dtype == SHOAL_FLOAT32 ? "f" : "B";
    const char *obs_name = info.obs_dtype == SHOAL_FLOAT32 ? "float32" : "uint8";
    size_t obs_count = agents * (size_t)info.obs_size;
    self->game = game;
    self->info = info;
    self->num_envs = num_envs;
    self->num_agents = (int)agents;
    self->num_threads = num_threads < num_envs ? num_threads : num_envs;
    memcpy(self->options, values, sizeof(values));
    if (get_buffer(self, BUF_OBS, objs[0], obs_count, obs_item, obs_kinds, obs_name) < 0 ||
        get_buffer(self, BUF_FINAL_OBS, objs[1], obs_count, obs_item, obs_kinds, obs_name) < 0 ||
        get_buffer(self, BUF_ACTIONS, objs[2], agents * (size_t)info.num_action_dims, 4, "il", "int32") < 0 ||
        get_buffer(self, BUF_REWARDS, objs[3], agents, 4, "f", "float32") < 0 ||
        get_buffer(self, BUF_TERMINALS, objs[4], agents, 1, "B", "uint8") < 0 ||
        get_buffer(self, BUF_TRUNCATIONS, objs[5], agents, 1, "B", "uint8") < 0)
        goto fail;
    /* Cache-line aligned states keep neighbouring envs on different lines for the threads. */
    self->state_stride = ((game->state_size ? game->state_size : 1) + 63) & ~(size_t)63;
    self->states = aligned_alloc(64, self->state_stride * (size_t)num_envs);
    self->io = PyMem_Calloc((size_t)num_envs, sizeof(EnvIO));
    if (!self->states || !self->io) {
        PyErr_NoMemory();
        goto fail;
    }
    memset(self->states, 0, self->state_stride * (size_t)num_envs);
    size_t apr = (size_t)info.agents_per_env;
    size_t obs_row = apr * (size_t)info.obs_size * obs_item;
    for (int i = 0; i < num_envs; i++) {
        EnvIO *io = &self->io[i];
        io->obs = (char *)self->bufs[BUF_OBS].buf + (size_t)i * obs_row;
        io->final_obs = (char *)self->bufs[BUF_FINAL_OBS].buf + (size_t)i * obs_row;
        io->actions = (const int32_t *)self->bufs[BUF_ACTIONS].buf + (size_t)i * apr * info.num_action_dims;
        io->rewards = (float *)self->bufs[BUF_REWARDS].buf + (size_t)i * apr;
        io->terminals = (uint8_t *)self->bufs[BUF_TERMINALS].buf + (size_t)i * apr;
        io->truncations = (uint8_t *)self->bufs[BUF_TRUNCATIONS].buf + (size_t)i * apr;
    }
    seed_envs(self, seed);
    for (int i = 0; i < num_envs; i++) game->init(self->states + (size_t)i * self->state_stride, values, &self->io[i]);
    self->envs_initialized = 1;
    if (start_pool(self) < 0) goto fail;
    Py_BEGIN_ALLOW_THREADS
    run_all(self, TASK_RESET);
    Py_END_ALLOW_THREADS
    return 0;
fail:
    release_all(self);
    self->closed = 1;
    return -1;
}

static int check_usable(VecEnvObject *self) {
    if (!self->game) {
        PyErr_SetString(PyExc_RuntimeError, "VecEnv was not initialized");
        return -1;
    }
    if (self->closed) {
        PyErr_SetString(PyExc_RuntimeError, "the env is closed");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the env is being stepped by another thread");
        return -1;
    }
    return 0;
}

static int validate_actions(VecEnvObject *self) {
    const int32_t *a = (const int32_t *)self->bufs[BUF_ACTIONS].buf;
    int dims = self->info.num_action_dims;
    if (dims == 1) {
        uint32_t n = (uint32_t)self->info.action_nvec[0];
        int bad = 0;
        /* Branch-free scan first; look for the culprit only when something is off. */
        for (int i = 0; i < self->num_agents; i++) bad |= (uint32_t)a[i] >= n;
        if (!bad) return 0;
        for (int i = 0; i < self->num_agents; i++) {
            if ((uint32_t)a[i] >= n) {
                PyErr_Format(PyExc_ValueError, "action of agent %d is %d; expected an integer in [0, %d)", i,
                             (int)a[i], (int)n);
                return -1;
            }
        }
        return 0;
    }
    for (int i = 0; i < self->num_agents; i++) {
        for (int d = 0; d < dims; d++) {
            int32_t x = a[(size_t)i * dims + d];
            if ((uint32_t)x >= (uint32_t)self->info.action_nvec[d]) {
                PyErr_Format(PyExc_ValueError, "action [%d, %d] (agent %d, dimension %d) is %d; expected an integer in [0, %d)",
                             i, d, i, d, (int)x, self->info.action_nvec[d]);
                return -1;
            }
        }
    }
    return 0;
}

static PyObject *VecEnv_step(VecEnvObject *self, PyObject *noargs) {
    if (check_usable(self) < 0 || validate_actions(self) < 0) return NULL;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    run_all(self, TASK_STEP);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    Py_RETURN_NONE;
}

static PyObject *VecEnv_reset(VecEnvObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"seed", NULL};
    PyObject *seed_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:reset", kwlist, &seed_obj)) return NULL;
    if (check_usable(self) < 0) return NULL;
    if (seed_obj != Py_None) {
        if (!PyLong_Check(seed_obj)) {
            PyErr_Format(PyExc_TypeError, "seed must be an int or None, got %s", Py_TYPE(seed_obj)->tp_name);
            return NULL;
        }
        uint64_t seed = (uint64_t)PyLong_AsUnsignedLongLongMask(seed_obj);
        if (PyErr_Occurred()) return NULL;
        seed_envs(self, seed);
    }
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    run_all(self, TASK_RESET);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    Py_RETURN_NONE;
}

static PyObject *VecEnv_log(VecEnvObject *self, PyObject *noargs) {
    if (check_usable(self) < 0) return NULL;
    Log total = {0};
    for (int i = 0; i < self->num_envs; i++) {
        Log *l = &self->io[i].log;
        total.score += l->score;
        total.episode_return += l->episode_return;
        total.episode_length += l->episode_length;
        total.n += l->n;
        memset(l, 0, sizeof(*l));
    }
    return Py_BuildValue("{s:d,s:d,s:d,s:d}", "score", total.score, "episode_return", total.episode_return,
                         "episode_length", total.episode_length, "n", total.n);
}

static PyObject *VecEnv_render(VecEnvObject *self, PyObject *args) {
    int index = 0;
    if (!PyArg_ParseTuple(args, "|i:render", &index)) return NULL;
    if (check_usable(self) < 0) return NULL;
    if (index < 0 || index >= self->num_envs) {
        PyErr_Format(PyExc_IndexError, "env index must be in [0, %d), got %d", self->num_envs, index);
        return NULL;
    }
    if (!self->game->render) return PyUnicode_FromString("");
    char *buf = PyMem_Malloc(RENDER_BUF);
    if (!buf) return PyErr_NoMemory();
    buf[0] = 0;
    int n = self->game->render(self->states + (size_t)index * self->state_stride, buf, RENDER_BUF);
    if (n < 0) n = 0;
    if (n >= RENDER_BUF) n = RENDER_BUF - 1;
    PyObject *s = PyUnicode_DecodeUTF8(buf, n, "replace");
    PyMem_Free(buf);
    return s;
}

/* render_rgb(index, out): draw env `index` into `out`, a writable C-contiguous uint8 buffer of
 * rgb_height * rgb_width * 3 bytes (the game's rgb_shape). */
static PyObject *VecEnv_render_rgb(VecEnvObject *self, PyObject *args) {
    int index;
    PyObject *out;
    if (!PyArg_ParseTuple(args, "iO:render_rgb", &index, &out)) return NULL;
    if (check_usable(self) < 0) return NULL;
    if (!self->game->render_rgb) {
        PyErr_Format(PyExc_ValueError, "env '%s' has no RGB rendering (only render() text)", self->game->name);
        return NULL;
    }
    if (index < 0 || index >= self->num_envs) {
        PyErr_Format(PyExc_IndexError, "env index must be in [0, %d), got %d", self->num_envs, index);
        return NULL;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(out, &b, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) return NULL;
    size_t need = (size_t)self->game->rgb_width * (size_t)self->game->rgb_height * 3;
    if ((size_t)b.len != need) {
        PyErr_Format(PyExc_ValueError, "render_rgb needs a buffer of %zu bytes (%d x %d x 3), got %zd", need,
                     self->game->rgb_height, self->game->rgb_width, b.len);
        PyBuffer_Release(&b);
        return NULL;
    }
    self->game->render_rgb(self->states + (size_t)index * self->state_stride, (uint8_t *)b.buf);
    PyBuffer_Release(&b);
    Py_RETURN_NONE;
}

static PyObject *VecEnv_close(VecEnvObject *self, PyObject *noargs) {
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "cannot close the env while another thread steps it");
        return NULL;
    }
    release_all(self);
    self->closed = 1;
    Py_RETURN_NONE;
}

static void VecEnv_dealloc(VecEnvObject *self) {
    release_all(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *VecEnv_get_info(VecEnvObject *self, void *closure) {
    if (!self->game) {
        PyErr_SetString(PyExc_RuntimeError, "VecEnv was not initialized");
        return NULL;
    }
    return info_dict(&self->info);
}

static PyObject *VecEnv_get_num_threads(VecEnvObject *self, void *closure) {
    return PyLong_FromLong(self->num_threads);
}

static PyObject *VecEnv_get_closed(VecEnvObject *self, void *closure) { return PyBool_FromLong(self->closed); }

static PyObject *VecEnv_get_rgb_shape(VecEnvObject *self, void *closure) {
    if (!self->game || !self->game->render_rgb) Py_RETURN_NONE;
    return Py_BuildValue("(iii)", self->game->rgb_height, self->game->rgb_width, 3);
}

static PyMethodDef VecEnv_methods[] = {
    {"step", (PyCFunction)VecEnv_step, METH_NOARGS,
     "Validate the actions buffer, then advance every env one step (GIL released)."},
    {"reset", (PyCFunction)(void (*)(void))VecEnv_reset, METH_VARARGS | METH_KEYWORDS,
     "reset(seed=None): reset every env; a seed re-seeds each env's stream from (seed, env index)."},
    {"log", (PyCFunction)VecEnv_log, METH_NOARGS,
     "Sums of the episode statistics of all envs since the last call (then cleared)."},
    {"render", (PyCFunction)VecEnv_render, METH_VARARGS, "render(index=0) -> ANSI text of one env."},
    {"render_rgb", (PyCFunction)VecEnv_render_rgb, METH_VARARGS,
     "render_rgb(index, out): draw env index as RGB into out (a uint8 buffer of rgb_shape)."},
    {"close", (PyCFunction)VecEnv_close, METH_NOARGS, "Stop the threads and free the games (idempotent)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef VecEnv_getset[] = {
    {"info", (getter)VecEnv_get_info, NULL, "the GameInfo as a dict", NULL},
    {"num_threads", (getter)VecEnv_get_num_threads, NULL, "threads used (at most num_envs)", NULL},
    {"closed", (getter)VecEnv_get_closed, NULL, "whether close() was called", NULL},
    {"rgb_shape", (getter)VecEnv_get_rgb_shape, NULL, "(height, width, 3) of render_rgb, or None", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject VecEnvType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shoal.envs._native.VecEnv",
    .tp_doc = "VecEnv(game, num_envs, seed, options, num_threads, obs, final_obs, actions, rewards, terminals, "
              "truncations): many instances of one C game over caller-owned buffers.",
    .tp_basicsize = sizeof(VecEnvObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)VecEnv_init,
    .tp_dealloc = (destructor)VecEnv_dealloc,
    .tp_methods = VecEnv_methods,
    .tp_getset = VecEnv_getset,
};

static PyMethodDef module_methods[] = {
    {"games", py_games, METH_NOARGS, "games() -> list of {name, description, options: [{name, default, ...}]}"},
    {"configure", py_configure, METH_VARARGS,
     "configure(game, option_values) -> {obs_size, obs_dtype, obs_low, obs_high, agents_per_env, action_nvec}"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "_native", "Shoal's C environments.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&VecEnvType) < 0) return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (!m) return NULL;
    Py_INCREF(&VecEnvType);
    if (PyModule_AddObject(m, "VecEnv", (PyObject *)&VecEnvType) < 0) {
        Py_DECREF(&VecEnvType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
