/*
 * Memory: a diagnostic that needs recurrence. Observation (float32, num_symbols + 1):
 * a one-hot cue slot per symbol, then an "answer now" flag.
 *   step 0:             the cue, one-hot of a random symbol;
 *   steps 1 .. length:  blank, with the flag set on the last one (step `length`).
 * The action taken on the flagged step is the answer: reward +1 if it equals the cue,
 * else `wrong_reward` (default 0), then terminal. Actions before it are ignored. An episode
 * is length + 1 agent steps; length = 0 shows cue and flag together (solvable without
 * memory, a sanity check). A memoryless policy sees the same flagged observation whatever
 * the cue, so it scores at most 1 / num_symbols on average; a recurrent one can reach 1.
 * score = 1 for a correct answer, else 0.
 */
#ifndef SHOAL_MEMORY_H
#define SHOAL_MEMORY_H

#include "env_api.h"

#include <stdio.h>

typedef struct {
    int num_symbols, length;
    float wrong_reward;
    int cue;
    int t; /* agent steps taken in this episode */
    int last_answer, last_cue; /* of the previous episode, for render; -1 before one ends */
} Memory;

static const OptionSpec memory_options[] = {
    {"num_symbols", 4, 2, 64, 1, "number of cue symbols (and actions)"},
    {"length", 8, 0, 100000, 1, "blank steps between the cue and the answer"},
    {"wrong_reward", 0.0, -1.0, 0.0, 0, "reward for a wrong answer"},
};

static int memory_configure(GameInfo *info, const double *opt, char *err, size_t err_len) {
    (void)err;
    (void)err_len;
    info->obs_size = (int)opt[0] + 1;
    info->obs_dtype = SHOAL_FLOAT32;
    info->obs_low = 0.0f;
    info->obs_high = 1.0f;
    info->agents_per_env = 1;
    info->num_action_dims = 1;
    info->action_nvec[0] = (int)opt[0];
    return 0;
}

static void memory_init(void *state, const double *opt, EnvIO *io) {
    (void)io;
    Memory *m = (Memory *)state;
    m->num_symbols = (int)opt[0];
    m->length = (int)opt[1];
    m->wrong_reward = (float)opt[2];
    m->last_answer = -1;
    m->last_cue = -1;
}

static void memory_new_episode(Memory *m, EnvIO *io) {
    float *obs = (float *)io->obs;
    memset(obs, 0, (size_t)(m->num_symbols + 1) * sizeof(float));
    m->cue = shoal_rand_int(&io->rng, m->num_symbols);
    m->t = 0;
    obs[m->cue] = 1.0f;
    obs[m->num_symbols] = (float)(m->length == 0);
}

static void memory_reset(void *state, EnvIO *io) {
    Memory *m = (Memory *)state;
    memory_new_episode(m, io);
    io->rewards[0] = 0.0f;
    io->terminals[0] = 0;
    io->truncations[0] = 0;
}

static void memory_step(void *state, EnvIO *io) {
    Memory *m = (Memory *)state;
    float *obs = (float *)io->obs;
    io->truncations[0] = 0;
    if (m->t < m->length) {
        m->t++;
        /* Only the two slots that change are written. */
        if (m->t == 1) obs[m->cue] = 0.0f;
        if (m->t == m->length) obs[m->num_symbols] = 1.0f;
        io->rewards[0] = 0.0f;
        io->terminals[0] = 0;
        return;
    }
    int answer = io->actions[0];
    int correct = answer == m->cue;
    float reward = correct ? 1.0f : m->wrong_reward;
    io->rewards[0] = reward;
    io->terminals[0] = 1;
    shoal_log_episode(io, (double)correct, (double)reward, (double)(m->length + 1));
    m->last_answer = answer;
    m->last_cue = m->cue;
    memory_new_episode(m, io);
}

static int memory_render(void *state, char *buf, size_t buf_len) {
    const Memory *m = (const Memory *)state;
    const char *phase = m->t == 0 ? "cue shown" : m->t == m->length ? "answer now" : "waiting";
    int n = snprintf(buf, buf_len, "memory: cue %d, step %d of %d (%s); last episode: cue %d, answer %d\n",
                     m->cue, m->t, m->length + 1, phase, m->last_cue, m->last_answer);
    if (n < 0) return 0;
    return (size_t)n < buf_len ? n : (int)(buf_len > 0 ? buf_len - 1 : 0);
}

const GameDef memory_game = {
    "memory",
    "Diagnostic: remember a one-hot cue through `length` blank steps, then answer it",
    sizeof(Memory),
    memory_options,
    (int)(sizeof(memory_options) / sizeof(memory_options[0])),
    memory_configure,
    memory_init,
    memory_reset,
    memory_step,
    memory_render,
    NULL,
};

#endif
