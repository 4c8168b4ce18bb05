/*
 * CartPole: balance a pole on a cart by pushing it left or right.
 *
 * The dynamics, constants, start distribution and limits are the classic ones (Barto, Sutton
 * and Anderson 1983, as in Gymnasium's CartPole-v1, Euler integration). Reward 1 per step; the
 * episode terminates when |x| > 2.4 or |theta| > 12 degrees and is truncated after
 * `max_steps` steps. Log score = episode length.
 *
 * Observation (float32): x, x_dot, theta, theta_dot. GameInfo has one bound for all elements,
 * so every element is clipped into [-CARTPOLE_OBS_BOUND, CARTPOLE_OBS_BOUND]. Returned
 * observations never need clipping for x and theta (a state past the limits terminates and is
 * replaced by the next episode's start), and the velocities cannot reach the bound within the
 * limits; the clip only makes the Box a guarantee.
 */
#ifndef SHOAL_CARTPOLE_H
#define SHOAL_CARTPOLE_H

#include "env_api.h"
#include <stdio.h>

#define CARTPOLE_GRAVITY 9.8f
#define CARTPOLE_MASSCART 1.0f
#define CARTPOLE_MASSPOLE 0.1f
#define CARTPOLE_TOTAL_MASS (CARTPOLE_MASSCART + CARTPOLE_MASSPOLE)
#define CARTPOLE_LENGTH 0.5f /* half the pole's length */
#define CARTPOLE_POLEMASS_LENGTH (CARTPOLE_MASSPOLE * CARTPOLE_LENGTH)
#define CARTPOLE_FORCE_MAG 10.0f
#define CARTPOLE_TAU 0.02f
#define CARTPOLE_THETA_LIMIT (12.0f * 2.0f * 3.14159265358979f / 360.0f)
#define CARTPOLE_X_LIMIT 2.4f
#define CARTPOLE_OBS_BOUND 10.0f

typedef struct {
    float x, x_dot, theta, theta_dot;
    int steps;
    int max_steps;
} CartPole;

static const OptionSpec cartpole_options[] = {
    {"max_steps", 500, 1, 1000000, 1, "steps after which an episode is truncated (CartPole-v1: 500)"},
};

static int cartpole_configure(GameInfo *info, const double *opt, char *err, size_t err_len) {
    (void)opt;
    (void)err;
    (void)err_len;
    info->obs_size = 4;
    info->obs_dtype = SHOAL_FLOAT32;
    info->obs_low = -CARTPOLE_OBS_BOUND;
    info->obs_high = CARTPOLE_OBS_BOUND;
    info->agents_per_env = 1;
    info->num_action_dims = 1;
    info->action_nvec[0] = 2;
    return 0;
}

static inline float cartpole_clip(float v) {
    return fminf(fmaxf(v, -CARTPOLE_OBS_BOUND), CARTPOLE_OBS_BOUND);
}

static inline void cartpole_write_obs(const CartPole *c, float *obs) {
    obs[0] = cartpole_clip(c->x);
    obs[1] = cartpole_clip(c->x_dot);
    obs[2] = cartpole_clip(c->theta);
    obs[3] = cartpole_clip(c->theta_dot);
}

static void cartpole_start(CartPole *c, EnvIO *io) {
    c->x = shoal_rand_float(&io->rng) * 0.1f - 0.05f;
    c->x_dot = shoal_rand_float(&io->rng) * 0.1f - 0.05f;
    c->theta = shoal_rand_float(&io->rng) * 0.1f - 0.05f;
    c->theta_dot = shoal_rand_float(&io->rng) * 0.1f - 0.05f;
    c->steps = 0;
}

static void cartpole_init(void *state, const double *opt, EnvIO *io) {
    (void)io;
    ((CartPole *)state)->max_steps = (int)opt[0];
}

static void cartpole_reset(void *state, EnvIO *io) {
    CartPole *c = (CartPole *)state;
    cartpole_start(c, io);
    cartpole_write_obs(c, (float *)io->obs);
    io->rewards[0] = 0.0f;
    io->terminals[0] = 0;
    io->truncations[0] = 0;
}

static void cartpole_step(void *state, EnvIO *io) {
    CartPole *c = (CartPole *)state;
    float force = io->actions[0] ? CARTPOLE_FORCE_MAG : -CARTPOLE_FORCE_MAG;
    float costheta = cosf(c->theta);
    float sintheta = sinf(c->theta);
    float temp = (force + CARTPOLE_POLEMASS_LENGTH * c->theta_dot * c->theta_dot * sintheta) / CARTPOLE_TOTAL_MASS;
    float thetaacc = (CARTPOLE_GRAVITY * sintheta - costheta * temp) /
                     (CARTPOLE_LENGTH * (4.0f / 3.0f - CARTPOLE_MASSPOLE * costheta * costheta / CARTPOLE_TOTAL_MASS));
    float xacc = temp - CARTPOLE_POLEMASS_LENGTH * thetaacc * costheta / CARTPOLE_TOTAL_MASS;
    c->x += CARTPOLE_TAU * c->x_dot;
    c->x_dot += CARTPOLE_TAU * xacc;
    c->theta += CARTPOLE_TAU * c->theta_dot;
    c->theta_dot += CARTPOLE_TAU * thetaacc;
    c->steps++;

    float *obs = (float *)io->obs;
    int terminal = c->x < -CARTPOLE_X_LIMIT || c->x > CARTPOLE_X_LIMIT || c->theta < -CARTPOLE_THETA_LIMIT ||
                   c->theta > CARTPOLE_THETA_LIMIT;
    int truncated = !terminal && c->steps >= c->max_steps;
    io->rewards[0] = 1.0f;
    io->terminals[0] = (uint8_t)terminal;
    io->truncations[0] = (uint8_t)truncated;
    if (terminal || truncated) {
        shoal_log_episode(io, c->steps, c->steps, c->steps);
        if (truncated) {
            cartpole_write_obs(c, obs);
            shoal_save_final_obs(io, 0, 4, SHOAL_FLOAT32);
        }
        cartpole_start(c, io);
    }
    cartpole_write_obs(c, obs);
}

static int cartpole_render(void *state, char *buf, size_t len) {
    const CartPole *c = (const CartPole *)state;
    enum { TRACK = 49 };
    char track[TRACK + 1];
    memset(track, '-', TRACK);
    track[TRACK] = 0;
    float pos = (c->x + CARTPOLE_X_LIMIT) / (2.0f * CARTPOLE_X_LIMIT) * (TRACK - 1);
    int col = (int)(pos + 0.5f);
    if (col < 0) col = 0;
    if (col > TRACK - 1) col = TRACK - 1;
    /* The pole leans one column per 4 degrees, drawn one row above the cart. */
    int lean = (int)roundf(c->theta * 57.29578f / 4.0f);
    int pole = col + lean;
    if (pole < 0) pole = 0;
    if (pole > TRACK - 1) pole = TRACK - 1;
    char top[TRACK + 1];
    memset(top, ' ', TRACK);
    top[TRACK] = 0;
    top[pole] = lean == 0 ? '|' : (lean > 0 ? '/' : '\\');
    track[col] = '#';
    int n = snprintf(buf, len, "step %d  x=%+.3f  theta=%+.2f deg\n%s\n\x1b[1m%s\x1b[0m\n", c->steps, c->x,
                     c->theta * 57.29578f, top, track);
    return n < 0 ? 0 : (n >= (int)len ? (int)len - 1 : n);
}

static const GameDef cartpole_game = {
    .name = "cartpole",
    .description = "Balance a pole on a cart (classic control, CartPole-v1 dynamics); 2 actions, 4 floats",
    .state_size = sizeof(CartPole),
    .options = cartpole_options,
    .num_options = 1,
    .configure = cartpole_configure,
    .init = cartpole_init,
    .reset = cartpole_reset,
    .step = cartpole_step,
    .render = cartpole_render,
    .close = NULL,
};

#endif
