/*
 * The contract between Shoal's C games and the Python binding (binding.c).
 *
 * Each game lives in one header (breakout.h, cartpole.h, ...) that includes this file and
 * defines one `const GameDef <name>_game`. The binding owns every buffer; a game only
 * reads and writes the slices handed to it through EnvIO, so NumPy sees the results
 * without a copy.
 *
 * Buffers are laid out agent-major: agent `a` of an env owns
 *   obs[a * obs_size ...], actions[a * num_action_dims ...], rewards[a], terminals[a], truncations[a].
 * An env with several agents (snake) gets `agents_per_env` consecutive rows.
 *
 * Step semantics (Gymnasium's, with auto-reset inside the same step):
 *   - read this step's actions, advance the game, write rewards/terminals/truncations;
 *   - when an agent's episode ends, add its statistics to `log`; if the episode was
 *     truncated, copy the agent's last observation to `final_obs` (shoal_save_final_obs)
 *     so the trainer can bootstrap from it; then reset that agent (or the whole env);
 *   - write observations for the state the agent is now in (the new episode's first
 *     observation after a reset).
 * Games must not allocate or print in step(). All randomness comes from `io->rng` so the
 * same seed gives bit-identical trajectories whatever the thread count.
 */
#ifndef SHOAL_ENV_API_H
#define SHOAL_ENV_API_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define SHOAL_MAX_ACTION_DIMS 8
#define SHOAL_MAX_OPTIONS 16

typedef enum { SHOAL_FLOAT32 = 0, SHOAL_UINT8 = 1 } ShoalDtype;

/* Per-env episode statistics: sums over finished episodes. The binding adds them over
 * envs and the Python side divides by `n` to report means. */
typedef struct {
    double score;          /* game score (points, bricks, length, ...) */
    double episode_return; /* sum of rewards */
    double episode_length; /* agent steps */
    double n;              /* number of finished episodes */
} Log;

typedef struct {
    void *obs;               /* agents_per_env * obs_size elements of the game's obs dtype */
    void *final_obs;         /* same shape; written only for truncated agents */
    const int32_t *actions;  /* agents_per_env * num_action_dims, validated by the binding */
    float *rewards;
    uint8_t *terminals;
    uint8_t *truncations;
    Log log;
    uint64_t rng;            /* private PRNG state, seeded by the binding */
} EnvIO;

/* An option the user may pass to shoal.make(name, **options). Values travel as doubles;
 * `is_int` options are checked to be whole numbers. */
typedef struct {
    const char *name;
    double default_value;
    double min_value;
    double max_value;
    int is_int;
    const char *help;
} OptionSpec;

/* What the game tells the binding once the options are known. */
typedef struct {
    int obs_size;
    ShoalDtype obs_dtype;
    float obs_low;           /* bounds of every observation element */
    float obs_high;
    int agents_per_env;
    int num_action_dims;     /* 1 = Discrete(action_nvec[0]); >1 = MultiDiscrete(action_nvec) */
    int action_nvec[SHOAL_MAX_ACTION_DIMS];
    /* Pixel observations (frames.h): the row is frame_stack frames of frame_height x
     * frame_width uint8, oldest first. All 0 when the observation is not an image. */
    int frame_stack, frame_height, frame_width;
} GameInfo;

typedef struct {
    const char *name;
    const char *description;
    size_t state_size;                       /* sizeof the game's struct */
    const OptionSpec *options;
    int num_options;
    /* Fill `info` from validated option values (in `options` order). Return 0, or non-zero
     * after writing a message to err (e.g. an inconsistent combination of options). */
    int (*configure)(GameInfo *info, const double *option_values, char *err, size_t err_len);
    /* Called once per env on zeroed memory, before the first reset. The only place a game
     * may allocate (snake's grid); whatever it allocates, close() frees. */
    void (*init)(void *state, const double *option_values, EnvIO *io);
    void (*reset)(void *state, EnvIO *io);   /* full reset; writes obs, clears flags */
    void (*step)(void *state, EnvIO *io);
    /* Write a text picture of the env (ANSI colours allowed) into buf; return bytes written. */
    int (*render)(void *state, char *buf, size_t buf_len);
    void (*close)(void *state);              /* may be NULL */
    /* Draw an RGB picture of the env (rgb_height rows of rgb_width * 3 bytes) into rgb. May be
     * NULL: the game has only its text render. */
    void (*render_rgb)(const void *state, uint8_t *rgb);
    int rgb_width, rgb_height;
} GameDef;

/* ---- helpers shared by the games ---- */

/* splitmix64: tiny, fast, and good enough for game randomness. */
static inline uint64_t shoal_rand_u64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform float in [0, 1). */
static inline float shoal_rand_float(uint64_t *state) {
    return (float)(shoal_rand_u64(state) >> 40) * (1.0f / 16777216.0f);
}

/* Uniform integer in [0, n). */
static inline int shoal_rand_int(uint64_t *state, int n) {
    return (int)(((shoal_rand_u64(state) >> 32) * (uint64_t)n) >> 32);
}

static inline void shoal_log_episode(EnvIO *io, double score, double episode_return,
                                     double episode_length) {
    io->log.score += score;
    io->log.episode_return += episode_return;
    io->log.episode_length += episode_length;
    io->log.n += 1.0;
}

static inline void shoal_save_final_obs(EnvIO *io, int agent, int obs_size, ShoalDtype dtype) {
    size_t item = dtype == SHOAL_FLOAT32 ? sizeof(float) : sizeof(uint8_t);
    size_t row = (size_t)obs_size * item;
    memcpy((char *)io->final_obs + (size_t)agent * row, (const char *)io->obs + (size_t)agent * row, row);
}

#endif
