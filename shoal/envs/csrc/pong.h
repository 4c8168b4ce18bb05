/*
 * Pong: the agent's paddle (right) against a scripted paddle (left) that chases the ball
 * at a limited speed. First to `points_to_win` ends the episode (terminal).
 *
 * Court coordinates are in [0, 1] both ways, y growing downwards. Actions: 0 NOOP, 1 UP,
 * 2 DOWN. Reward +1 when the agent wins a point, -1 when it loses one. A step runs
 * `frameskip` physics ticks but stops early at a point, so a step's reward is -1, 0 or +1.
 * Where the ball meets a paddle sets its outgoing angle (edge hits leave steepest), and
 * every paddle hit speeds the ball up a little, so rallies cannot last for ever.
 *
 * Observation (float32, 8 values, all in [-1, 1]): agent paddle y, opponent paddle y,
 * ball x, ball y (positions mapped from [0, 1] to [-1, 1]), ball vx, ball vy (over their
 * maxima), agent points and opponent points (over points_to_win).
 *
 * score = points the agent won in the episode (0 .. points_to_win); the point difference
 * is the episode return.
 *
 * With obs = pixels (frames.h) the observation is a stack of grayscale frames of the court
 * (x in [0, 1], y in [-0.04, 1.04]): the top and bottom walls, both paddles (0.02 wide, behind
 * their faces) and the ball (a square of side 2 * PONG_BALL_R), each in its own gray level.
 * render_rgb draws the same picture in colour at 200 x 216.
 */
#ifndef SHOAL_PONG_H
#define SHOAL_PONG_H

#include "env_api.h"
#include "frames.h"

#include <stdio.h>

#define PONG_OBS_SIZE 8
#define PONG_FACE 0.04f         /* distance of each paddle's face from its back wall */
#define PONG_BALL_R 0.01f
#define PONG_PADDLE_SPEED 0.03f /* agent paddle, per tick */
#define PONG_SERVE_VX 0.015f
#define PONG_MAX_VX 0.04f
#define PONG_MAX_VY 0.03f
#define PONG_SPEEDUP 1.05f

typedef struct {
    float paddle_y, opp_y; /* paddle centres */
    float ball_x, ball_y, ball_vx, ball_vy;
    int points, opp_points;
    int steps;
    float episode_return;
    /* options */
    int frameskip, points_to_win, max_steps;
    float opp_speed, half_height;
    ShoalPixelMode pixels;
    int obs_size;
    ShoalDtype obs_dtype;
} Pong;

#define PONG_OPT_OBS 5 /* the SHOAL_PIXEL_OPTIONS follow the game's own five */
#define PONG_WALL 0.04f
#define PONG_PADDLE_W 0.02f
#define PONG_RGB_W 200
#define PONG_RGB_H 216

static const ShoalColour PONG_BACKGROUND = {0, {16, 40, 24}};
static const ShoalColour PONG_WALL_COLOUR = {90, {200, 200, 200}};
static const ShoalColour PONG_OPPONENT_COLOUR = {150, {220, 90, 60}};
static const ShoalColour PONG_AGENT_COLOUR = {210, {90, 200, 90}};
static const ShoalColour PONG_BALL_COLOUR = {255, {250, 250, 250}};

static const OptionSpec pong_options[] = {
    {"frameskip", 4, 1, 16, 1, "physics ticks per agent step"},
    {"points_to_win", 21, 1, 99, 1, "points that end the episode (either side)"},
    {"opponent_speed", 0.6, 0.0, 2.0, 0, "scripted paddle speed, as a fraction of the agent's paddle speed"},
    {"paddle_height", 0.2, 0.04, 1.0, 0, "paddle height as a fraction of the court height"},
    {"max_steps", 10000, 0, 1e8, 1, "truncate episodes after this many agent steps (0 = never)"},
    SHOAL_PIXEL_OPTIONS,
};

static int pong_configure(GameInfo *info, const double *opt, char *err, size_t err_len) {
    (void)err;
    (void)err_len;
    info->obs_size = PONG_OBS_SIZE;
    info->obs_dtype = SHOAL_FLOAT32;
    info->obs_low = -1.0f;
    info->obs_high = 1.0f;
    ShoalPixelMode pixels = shoal_pixel_mode(opt, PONG_OPT_OBS);
    if (pixels.enabled) shoal_pixel_info(info, pixels);
    info->agents_per_env = 1;
    info->num_action_dims = 1;
    info->action_nvec[0] = 3;
    return 0;
}

static void pong_init(void *state, const double *opt, EnvIO *io) {
    (void)io;
    Pong *p = (Pong *)state;
    p->frameskip = (int)opt[0];
    p->points_to_win = (int)opt[1];
    p->opp_speed = (float)opt[2] * PONG_PADDLE_SPEED;
    p->half_height = 0.5f * (float)opt[3];
    p->max_steps = (int)opt[4];
    p->pixels = shoal_pixel_mode(opt, PONG_OPT_OBS);
    p->obs_size = p->pixels.enabled ? p->pixels.stack * p->pixels.size * p->pixels.size : PONG_OBS_SIZE;
    p->obs_dtype = p->pixels.enabled ? SHOAL_UINT8 : SHOAL_FLOAT32;
}

/* The court, on a grayscale or an RGB canvas; the ball is drawn last. */
static void pong_draw(const Pong *p, const ShoalCanvas *c) {
    shoal_clear(c, PONG_BACKGROUND);
    shoal_fill_rect(c, 0.0f, -PONG_WALL, 1.0f, 0.0f, PONG_WALL_COLOUR);
    shoal_fill_rect(c, 0.0f, 1.0f, 1.0f, 1.0f + PONG_WALL, PONG_WALL_COLOUR);
    float h = p->half_height;
    shoal_fill_rect(c, PONG_FACE - PONG_PADDLE_W, p->opp_y - h, PONG_FACE, p->opp_y + h, PONG_OPPONENT_COLOUR);
    shoal_fill_rect(c, 1.0f - PONG_FACE, p->paddle_y - h, 1.0f - PONG_FACE + PONG_PADDLE_W, p->paddle_y + h,
                    PONG_AGENT_COLOUR);
    shoal_fill_rect(c, p->ball_x - PONG_BALL_R, p->ball_y - PONG_BALL_R, p->ball_x + PONG_BALL_R,
                    p->ball_y + PONG_BALL_R, PONG_BALL_COLOUR);
}

static void pong_draw_gray(const Pong *p, uint8_t *frame) {
    int side = p->pixels.size;
    ShoalCanvas c = shoal_canvas(frame, side, side, 1, 0.0f, -PONG_WALL, 1.0f, 1.0f + PONG_WALL);
    pong_draw(p, &c);
}

static void pong_render_rgb(const void *state, uint8_t *rgb) {
    ShoalCanvas c = shoal_canvas(rgb, PONG_RGB_W, PONG_RGB_H, 3, 0.0f, -PONG_WALL, 1.0f, 1.0f + PONG_WALL);
    pong_draw((const Pong *)state, &c);
}

/* Ball from the centre towards `direction` (+1 = the agent's side), at a random angle. */
static inline void pong_serve(Pong *p, EnvIO *io, float direction) {
    p->ball_x = 0.5f;
    p->ball_y = 0.25f + 0.5f * shoal_rand_float(&io->rng);
    p->ball_vx = direction * PONG_SERVE_VX;
    p->ball_vy = (shoal_rand_float(&io->rng) - 0.5f) * PONG_MAX_VY;
}

static inline void pong_write_obs(const Pong *p, float *o) {
    float inv_points = 1.0f / (float)p->points_to_win;
    o[0] = 2.0f * p->paddle_y - 1.0f;
    o[1] = 2.0f * p->opp_y - 1.0f;
    o[2] = 2.0f * p->ball_x - 1.0f;
    o[3] = 2.0f * p->ball_y - 1.0f;
    o[4] = p->ball_vx * (1.0f / PONG_MAX_VX);
    o[5] = p->ball_vy * (1.0f / PONG_MAX_VY);
    o[6] = (float)p->points * inv_points;
    o[7] = (float)p->opp_points * inv_points;
}

static void pong_new_episode(Pong *p, EnvIO *io) {
    p->paddle_y = 0.5f;
    p->opp_y = 0.5f;
    p->points = 0;
    p->opp_points = 0;
    p->steps = 0;
    p->episode_return = 0.0f;
    pong_serve(p, io, (shoal_rand_u64(&io->rng) & 1) ? 1.0f : -1.0f);
}

/* The observation after a step: the numbers, or the stack shifted with the new frame last. */
static inline void pong_observe(const Pong *p, void *obs) {
    if (p->pixels.enabled) {
        pong_draw_gray(p, shoal_push_frame((uint8_t *)obs, p->pixels));
        return;
    }
    pong_write_obs(p, (float *)obs);
}

/* A new episode's first observation: with pixels, every slot holds its first frame. */
static inline void pong_observe_first(const Pong *p, void *obs) {
    if (p->pixels.enabled) {
        pong_draw_gray(p, shoal_newest_frame((uint8_t *)obs, p->pixels));
        shoal_fill_stack((uint8_t *)obs, p->pixels);
        return;
    }
    pong_write_obs(p, (float *)obs);
}

static void pong_reset(void *state, EnvIO *io) {
    Pong *p = (Pong *)state;
    pong_new_episode(p, io);
    pong_observe_first(p, io->obs);
    io->rewards[0] = 0.0f;
    io->terminals[0] = 0;
    io->truncations[0] = 0;
}

static inline float pong_clampf(float x, float lo, float hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}

/* Bounce the ball off a paddle centred at `paddle_y`: the offset from the centre picks the
 * outgoing angle. */
static inline void pong_hit(Pong *p, float paddle_y, float direction) {
    float speed = fabsf(p->ball_vx) * PONG_SPEEDUP;
    float offset = (p->ball_y - paddle_y) / (p->half_height + PONG_BALL_R);
    p->ball_vx = direction * (speed < PONG_MAX_VX ? speed : PONG_MAX_VX);
    p->ball_vy = PONG_MAX_VY * pong_clampf(offset, -1.0f, 1.0f);
}

/* One physics tick. Returns +1 if the agent won a point, -1 if it lost one, else 0. */
static inline int pong_tick(Pong *p, float paddle_dy) {
    float lo = p->half_height, hi = 1.0f - p->half_height;
    p->paddle_y = pong_clampf(p->paddle_y + paddle_dy, lo, hi);
    float chase = pong_clampf(p->ball_y - p->opp_y, -p->opp_speed, p->opp_speed);
    p->opp_y = pong_clampf(p->opp_y + chase, lo, hi);

    float x0 = p->ball_x;
    p->ball_x += p->ball_vx;
    p->ball_y += p->ball_vy;
    if (p->ball_y < PONG_BALL_R) {
        p->ball_y = 2.0f * PONG_BALL_R - p->ball_y;
        p->ball_vy = -p->ball_vy;
    } else if (p->ball_y > 1.0f - PONG_BALL_R) {
        p->ball_y = 2.0f * (1.0f - PONG_BALL_R) - p->ball_y;
        p->ball_vy = -p->ball_vy;
    }

    float reach = p->half_height + PONG_BALL_R;
    float right_face = 1.0f - PONG_FACE - PONG_BALL_R; /* ball centre x at contact */
    float left_face = PONG_FACE + PONG_BALL_R;
    if (p->ball_vx > 0.0f) {
        if (x0 <= right_face && p->ball_x > right_face && fabsf(p->ball_y - p->paddle_y) <= reach) {
            p->ball_x = 2.0f * right_face - p->ball_x;
            pong_hit(p, p->paddle_y, -1.0f);
        } else if (p->ball_x > 1.0f) {
            return -1;
        }
    } else {
        if (x0 >= left_face && p->ball_x < left_face && fabsf(p->ball_y - p->opp_y) <= reach) {
            p->ball_x = 2.0f * left_face - p->ball_x;
            pong_hit(p, p->opp_y, 1.0f);
        } else if (p->ball_x < 0.0f) {
            return 1;
        }
    }
    return 0;
}

static void pong_step(void *state, EnvIO *io) {
    static const float dy[3] = {0.0f, -PONG_PADDLE_SPEED, PONG_PADDLE_SPEED};
    Pong *p = (Pong *)state;
    float paddle_dy = dy[io->actions[0]];
    int point = 0;
    for (int t = 0; t < p->frameskip && point == 0; t++) point = pong_tick(p, paddle_dy);

    float reward = (float)point;
    int terminal = 0;
    if (point != 0) {
        p->points += point > 0;
        p->opp_points += point < 0;
        terminal = p->points >= p->points_to_win || p->opp_points >= p->points_to_win;
        /* The side that lost the point receives the next serve. */
        pong_serve(p, io, point > 0 ? -1.0f : 1.0f);
    }
    p->steps++;
    p->episode_return += reward;
    int truncated = !terminal && p->max_steps > 0 && p->steps >= p->max_steps;

    io->rewards[0] = reward;
    io->terminals[0] = (uint8_t)terminal;
    io->truncations[0] = (uint8_t)truncated;
    pong_observe(p, io->obs);
    if (terminal | truncated) {
        if (truncated) shoal_save_final_obs(io, 0, p->obs_size, p->obs_dtype);
        shoal_log_episode(io, (double)p->points, (double)p->episode_return, (double)p->steps);
        pong_new_episode(p, io);
        pong_observe_first(p, io->obs);
    }
}

#define PONG_COLS 48
#define PONG_ROWS 18

static int pong_render(void *state, char *buf, size_t buf_len) {
    const Pong *p = (const Pong *)state;
    char pic[(PONG_COLS + 3) * (PONG_ROWS + 2) + 1];
    char *q = pic;
    int left_col = (int)(PONG_FACE * PONG_COLS), right_col = PONG_COLS - 1 - left_col;
    int bx = (int)(p->ball_x * PONG_COLS), by = (int)(p->ball_y * PONG_ROWS);
    for (int r = -1; r <= PONG_ROWS; r++) {
        int edge = r < 0 || r == PONG_ROWS;
        float y = ((float)r + 0.5f) / PONG_ROWS;
        *q++ = edge ? '+' : '|';
        for (int c = 0; c < PONG_COLS; c++) {
            char ch = edge ? '-' : ' ';
            if (!edge && c == left_col && fabsf(y - p->opp_y) <= p->half_height) ch = '#';
            if (!edge && c == right_col && fabsf(y - p->paddle_y) <= p->half_height) ch = '#';
            if (r == by && c == bx) ch = 'o';
            *q++ = ch;
        }
        *q++ = edge ? '+' : '|';
        *q++ = '\n';
    }
    *q = '\0';
    int n = snprintf(buf, buf_len, "opponent %d : %d agent   step %d\n%s", p->opp_points, p->points,
                     p->steps, pic);
    if (n < 0) return 0;
    return (size_t)n < buf_len ? n : (int)(buf_len > 0 ? buf_len - 1 : 0);
}

const GameDef pong_game = {
    "pong",
    "Pong against a scripted paddle; first to points_to_win; reward +1/-1 per point",
    sizeof(Pong),
    pong_options,
    (int)(sizeof(pong_options) / sizeof(pong_options[0])),
    pong_configure,
    pong_init,
    pong_reset,
    pong_step,
    pong_render,
    NULL,
    pong_render_rgb,
    PONG_RGB_W,
    PONG_RGB_H,
};

#endif
