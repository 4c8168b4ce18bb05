/*
 * Bandit: a diagnostic for trainer tests. Every step is a whole episode (terminal): pull
 * one of `num_arms` arms; the best arm pays 1, the others 0, plus Gaussian noise of
 * standard deviation `noise`. The observation is a constant vector of ones, so a working
 * trainer converges to always pulling the best arm (score = 1 for the best arm, else 0,
 * noise-free, so the mean score is the best-arm rate).
 *
 * best_arm >= 0 fixes the best arm for every env. best_arm = -1 draws it per env at each
 * full reset; since the observation does not reveal it, no policy can then beat the mean
 * over envs of the arm frequencies: that mode checks a trainer does not "learn" the
 * impossible.
 */
#ifndef SHOAL_BANDIT_H
#define SHOAL_BANDIT_H

#include "env_api.h"

#include <stdio.h>

typedef struct {
    int num_arms, best_arm_option, obs_size;
    float noise;
    int best_arm;
    int last_arm; /* for render; -1 before the first pull */
    float last_reward;
} Bandit;

static const OptionSpec bandit_options[] = {
    {"num_arms", 4, 2, 256, 1, "number of arms (actions)"},
    {"best_arm", 1, -1, 255, 1, "the paying arm for every env; -1 = a random arm per env at reset"},
    {"noise", 0.0, 0.0, 10.0, 0, "standard deviation of Gaussian noise added to each reward"},
    {"obs_size", 1, 1, 4096, 1, "length of the constant observation"},
};

static int bandit_configure(GameInfo *info, const double *opt, char *err, size_t err_len) {
    if (opt[1] >= opt[0]) {
        snprintf(err, err_len, "best_arm must be -1 or below num_arms (%.0f), got %.0f", opt[0],
                 opt[1]);
        return 1;
    }
    info->obs_size = (int)opt[3];
    info->obs_dtype = SHOAL_FLOAT32;
    info->obs_low = 0.0f;
    info->obs_high = 1.0f;
    info->agents_per_env = 1;
    info->num_action_dims = 1;
    info->action_nvec[0] = (int)opt[0];
    return 0;
}

static void bandit_init(void *state, const double *opt, EnvIO *io) {
    (void)io;
    Bandit *b = (Bandit *)state;
    b->num_arms = (int)opt[0];
    b->best_arm_option = (int)opt[1];
    b->noise = (float)opt[2];
    b->obs_size = (int)opt[3];
}

static void bandit_reset(void *state, EnvIO *io) {
    Bandit *b = (Bandit *)state;
    b->best_arm = b->best_arm_option >= 0 ? b->best_arm_option : shoal_rand_int(&io->rng, b->num_arms);
    float *obs = (float *)io->obs;
    for (int k = 0; k < b->obs_size; k++) obs[k] = 1.0f;
    b->last_arm = -1;
    b->last_reward = 0.0f;
    io->rewards[0] = 0.0f;
    io->terminals[0] = 0;
    io->truncations[0] = 0;
}

/* The observation never changes, so step leaves it as reset wrote it. */
static void bandit_step(void *state, EnvIO *io) {
    Bandit *b = (Bandit *)state;
    float hit = (float)(io->actions[0] == b->best_arm);
    float reward = hit;
    if (b->noise > 0.0f) {
        /* Box-Muller; 1 - u keeps the logarithm's argument in (0, 1]. */
        float u1 = 1.0f - shoal_rand_float(&io->rng);
        float u2 = shoal_rand_float(&io->rng);
        reward += b->noise * sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
    }
    b->last_arm = io->actions[0];
    b->last_reward = reward;
    io->rewards[0] = reward;
    io->terminals[0] = 1;
    io->truncations[0] = 0;
    shoal_log_episode(io, (double)hit, (double)reward, 1.0);
}

static int bandit_render(void *state, char *buf, size_t buf_len) {
    const Bandit *b = (const Bandit *)state;
    int n = snprintf(buf, buf_len, "bandit: %d arms, best arm %d, last pull %d, reward %.3f\n", b->num_arms,
                     b->best_arm, b->last_arm, (double)b->last_reward);
    if (n < 0) return 0;
    return (size_t)n < buf_len ? n : (int)(buf_len > 0 ? buf_len - 1 : 0);
}

const GameDef bandit_game = {
    "bandit",
    "Diagnostic: k arms, constant observation, one paying arm, one-step episodes",
    sizeof(Bandit),
    bandit_options,
    (int)(sizeof(bandit_options) / sizeof(bandit_options[0])),
    bandit_configure,
    bandit_init,
    bandit_reset,
    bandit_step,
    bandit_render,
    NULL,
};

#endif
