/*
 * Breakout with the Atari 2600 rules, on a vector observation.
 *
 * Playfield (pixels): BREAKOUT_W = 144 wide (18 columns of 8-pixel bricks, as on the Atari),
 * the back wall at y = 0, 6 rows of 6-pixel bricks from y = 48 to 84, the paddle's top at
 * y = 186, and the ball is lost when it passes y = 200. The ball is a point (but see
 * ball_width below); one frame moves it at most 2 * ball_speed (< 6) pixels vertically and 8
 * horizontally, so it can never jump over a brick row, and a brick collision is one grid
 * lookup (cell from position; no scan).
 *
 * Rules: rows are worth 7, 7, 4, 4, 1, 1 points from the top; 5 balls; when the first wall is
 * cleared a second one appears, and clearing it ends the game (max score 864). The ball
 * speeds up one level after 4 and after 12 brick hits and on its first hit of the orange
 * (second) and red (top) rows; each level adds 25% of the base speed. After the ball reaches
 * the back wall the paddle shrinks to half its width. Speed and paddle width return to normal
 * when a new ball is served. The paddle bounce angle grows with the distance from the
 * paddle's centre, up to 60 degrees from vertical.
 *
 * The ball is a point for the walls and bricks, but `ball_width` wide (8 pixels) where it meets
 * the paddle: it is caught when it overlaps the paddle. Why 8: at frameskip 4 one agent step
 * moves the paddle 16 pixels, so when the ball arrives on the last frame of a step the paddle
 * can only be at positions 16 pixels apart, and with a narrower catch window the half-width
 * paddle misses some of those balls whatever the policy does. With a 2-pixel ball (the earlier
 * rule) a scripted planner that knows where the ball lands averages 689 of 864; with 8, the
 * half paddle's window (8 + 8) equals one step's move and it scores 864
 * (benchmarks/breakout_ceiling.py). The catch geometry then matches PufferLib's Breakout
 * (paddle 11% and ball 5.6% of the playfield's width).
 *
 * Actions: 0 NOOP, 1 LEFT, 2 RIGHT (serving is automatic). One agent step = `frameskip`
 * frames with the same action; reward = points gained. Terminal when the balls run out or the
 * score reaches 864; truncated after `max_episode_frames` frames (Atari's 108000 by default).
 *
 * Observation (118 float32 in [-1, 1]): paddle x, paddle width, ball x, ball y (fractions of
 * the playfield), ball vx, vy (fractions of the top speed), balls left / balls, score / 864,
 * wall (0 first, 1 second), speed level / 4, then one flag per brick (row-major from the top
 * left, 1 = present). The brick flags persist in the observation row between steps: a step
 * writes only the flags of bricks it removed, and a reset or a new wall rewrites all of them.
 *
 * With obs = pixels (frames.h) the observation is instead a stack of grayscale frames of the
 * 160 x 210 area from (-8, -8): the walls (8 wide, left, right and top), the bricks, the
 * paddle (4 high) and the ball (drawn 4 x 4 around its point), each in its own gray level.
 * render_rgb draws the same picture in colour at 160 x 210, one pixel per game pixel.
 */
#ifndef SHOAL_BREAKOUT_H
#define SHOAL_BREAKOUT_H

#include "env_api.h"
#include "frames.h"

#define BREAKOUT_W 144.0f
#define BREAKOUT_H 200.0f
#define BREAKOUT_ROWS 6
#define BREAKOUT_COLS 18
#define BREAKOUT_BRICKS (BREAKOUT_ROWS * BREAKOUT_COLS)
#define BREAKOUT_BRICK_W 8.0f
#define BREAKOUT_BRICK_H 6.0f
#define BREAKOUT_BRICK_TOP 48.0f
#define BREAKOUT_BRICK_BOTTOM (BREAKOUT_BRICK_TOP + BREAKOUT_ROWS * BREAKOUT_BRICK_H)
#define BREAKOUT_PADDLE_Y 186.0f
#define BREAKOUT_SERVE_Y 100.0f
#define BREAKOUT_MAX_SCORE 864
#define BREAKOUT_MAX_ANGLE 1.04719755f /* 60 degrees */
#define BREAKOUT_HEADER 10
#define BREAKOUT_OBS_SIZE (BREAKOUT_HEADER + BREAKOUT_BRICKS)

enum {
    BREAKOUT_OPT_FRAMESKIP,
    BREAKOUT_OPT_MAX_FRAMES,
    BREAKOUT_OPT_PADDLE_WIDTH,
    BREAKOUT_OPT_PADDLE_SPEED,
    BREAKOUT_OPT_BALL_SPEED,
    BREAKOUT_OPT_BALLS,
    BREAKOUT_OPT_SHRINK,
    BREAKOUT_OPT_BALL_WIDTH,
    BREAKOUT_OPT_OBS, /* the SHOAL_PIXEL_OPTIONS, in their order */
    BREAKOUT_NUM_OPTIONS = BREAKOUT_OPT_OBS + SHOAL_NUM_PIXEL_OPTIONS
};

static const OptionSpec breakout_options[BREAKOUT_NUM_OPTIONS] = {
    {"frameskip", 4, 1, 64, 1, "frames per agent step (the action repeats)"},
    {"max_episode_frames", 108000, 1, 1e9, 1, "frames after which an episode is truncated (Atari: 108000)"},
    {"paddle_width", 16, 4, 64, 1, "paddle width in pixels (the playfield is 144 wide)"},
    {"paddle_speed", 4, 1, 16, 0, "paddle movement in pixels per frame"},
    {"ball_speed", 2, 0.5, 2.75, 0, "initial ball speed in pixels per frame (top speed is twice this)"},
    {"balls", 5, 1, 100, 1, "balls (lives) per game"},
    {"shrink_paddle", 1, 0, 1, 1, "1: the paddle halves after the ball reaches the back wall"},
    {"ball_width", 8, 0, 32, 0, "ball width in pixels where it meets the paddle (a point elsewhere)"},
    SHOAL_PIXEL_OPTIONS,
};

static const float BREAKOUT_POINTS[BREAKOUT_ROWS] = {7, 7, 4, 4, 1, 1};

typedef struct {
    /* hot state, kept together at the front */
    float ball_x, ball_y, ball_vx, ball_vy;
    float paddle_x, paddle_half;
    float speed;
    int brick_hits;
    int level;
    int hit_orange, hit_red;
    int shrunk;
    int balls;
    int score;
    int bricks_left;
    int wall;
    int frames;
    int steps;
    /* options */
    int frameskip;
    int max_frames;
    int max_balls;
    int shrink;
    float full_half;
    float ball_half;
    float paddle_speed;
    float base_speed;
    float inv_top_speed;
    ShoalPixelMode pixels;
    int obs_size;
    ShoalDtype obs_dtype;
    uint8_t bricks[BREAKOUT_BRICKS];
} Breakout;

/* The picture's area in game coordinates: the playfield with an 8-pixel wall on the left,
 * right and top (the Atari frame's 160 x 210). */
#define BREAKOUT_WALL 8.0f
#define BREAKOUT_VIEW_X0 (-BREAKOUT_WALL)
#define BREAKOUT_VIEW_Y0 (-BREAKOUT_WALL)
#define BREAKOUT_VIEW_X1 (BREAKOUT_W + BREAKOUT_WALL)
#define BREAKOUT_VIEW_Y1 (BREAKOUT_H + 2.0f)
#define BREAKOUT_RGB_W 160
#define BREAKOUT_RGB_H 210
#define BREAKOUT_PADDLE_H 4.0f
#define BREAKOUT_BALL_DRAWN 4.0f

static const ShoalColour BREAKOUT_BACKGROUND = {0, {0, 0, 0}};
static const ShoalColour BREAKOUT_WALL_COLOUR = {70, {142, 142, 142}};
static const ShoalColour BREAKOUT_PADDLE_COLOUR = {230, {200, 72, 72}};
static const ShoalColour BREAKOUT_BALL_COLOUR = {255, {236, 236, 236}};
/* Brick rows from the top: red, orange, yellow-orange, yellow, green, blue (the Atari's). */
static const ShoalColour BREAKOUT_BRICK_COLOURS[BREAKOUT_ROWS] = {
    {200, {200, 72, 72}},  {180, {198, 108, 58}}, {160, {180, 122, 48}},
    {140, {162, 162, 42}}, {120, {72, 160, 72}},  {100, {66, 72, 200}},
};

static int breakout_configure(GameInfo *info, const double *opt, char *err, size_t err_len) {
    (void)err;
    (void)err_len;
    info->obs_size = BREAKOUT_OBS_SIZE;
    info->obs_dtype = SHOAL_FLOAT32;
    info->obs_low = -1.0f;
    info->obs_high = 1.0f;
    ShoalPixelMode pixels = shoal_pixel_mode(opt, BREAKOUT_OPT_OBS);
    if (pixels.enabled) shoal_pixel_info(info, pixels);
    info->agents_per_env = 1;
    info->num_action_dims = 1;
    info->action_nvec[0] = 3;
    return 0;
}

static void breakout_init(void *state, const double *opt, EnvIO *io) {
    Breakout *b = (Breakout *)state;
    (void)io;
    b->frameskip = (int)opt[BREAKOUT_OPT_FRAMESKIP];
    b->max_frames = (int)opt[BREAKOUT_OPT_MAX_FRAMES];
    b->full_half = 0.5f * (float)opt[BREAKOUT_OPT_PADDLE_WIDTH];
    b->paddle_speed = (float)opt[BREAKOUT_OPT_PADDLE_SPEED];
    b->base_speed = (float)opt[BREAKOUT_OPT_BALL_SPEED];
    b->inv_top_speed = 1.0f / (2.0f * b->base_speed);
    b->max_balls = (int)opt[BREAKOUT_OPT_BALLS];
    b->shrink = (int)opt[BREAKOUT_OPT_SHRINK];
    b->ball_half = 0.5f * (float)opt[BREAKOUT_OPT_BALL_WIDTH];
    b->pixels = shoal_pixel_mode(opt, BREAKOUT_OPT_OBS);
    b->obs_size = b->pixels.enabled ? b->pixels.stack * b->pixels.size * b->pixels.size : BREAKOUT_OBS_SIZE;
    b->obs_dtype = b->pixels.enabled ? SHOAL_UINT8 : SHOAL_FLOAT32;
}

/* The scene, on a grayscale or an RGB canvas. The ball is drawn last so it shows over all. */
static void breakout_draw(const Breakout *b, const ShoalCanvas *c) {
    shoal_clear(c, BREAKOUT_BACKGROUND);
    shoal_fill_rect(c, BREAKOUT_VIEW_X0, BREAKOUT_VIEW_Y0, 0.0f, BREAKOUT_VIEW_Y1, BREAKOUT_WALL_COLOUR);
    shoal_fill_rect(c, BREAKOUT_W, BREAKOUT_VIEW_Y0, BREAKOUT_VIEW_X1, BREAKOUT_VIEW_Y1, BREAKOUT_WALL_COLOUR);
    shoal_fill_rect(c, 0.0f, BREAKOUT_VIEW_Y0, BREAKOUT_W, 0.0f, BREAKOUT_WALL_COLOUR);
    for (int row = 0; row < BREAKOUT_ROWS; row++) {
        /* One rectangle per run of standing bricks: drawing brick by brick made the bricks most
         * of a frame's cost. A brick is at least one pixel wide and high on the smallest
         * frame, so the runs cover exactly the pixels the single bricks would. */
        const uint8_t *bricks = b->bricks + row * BREAKOUT_COLS;
        float y0 = BREAKOUT_BRICK_TOP + (float)row * BREAKOUT_BRICK_H;
        int col = 0;
        while (col < BREAKOUT_COLS) {
            if (!bricks[col]) {
                col++;
                continue;
            }
            int start = col;
            while (col < BREAKOUT_COLS && bricks[col]) col++;
            shoal_fill_rect(c, (float)start * BREAKOUT_BRICK_W, y0, (float)col * BREAKOUT_BRICK_W,
                            y0 + BREAKOUT_BRICK_H, BREAKOUT_BRICK_COLOURS[row]);
        }
    }
    shoal_fill_rect(c, b->paddle_x - b->paddle_half, BREAKOUT_PADDLE_Y, b->paddle_x + b->paddle_half,
                    BREAKOUT_PADDLE_Y + BREAKOUT_PADDLE_H, BREAKOUT_PADDLE_COLOUR);
    const float r = 0.5f * BREAKOUT_BALL_DRAWN;
    shoal_fill_rect(c, b->ball_x - r, b->ball_y - r, b->ball_x + r, b->ball_y + r, BREAKOUT_BALL_COLOUR);
}

static void breakout_draw_gray(const Breakout *b, uint8_t *frame) {
    int side = b->pixels.size;
    ShoalCanvas c = shoal_canvas(frame, side, side, 1, BREAKOUT_VIEW_X0, BREAKOUT_VIEW_Y0, BREAKOUT_VIEW_X1,
                                 BREAKOUT_VIEW_Y1);
    breakout_draw(b, &c);
}

static void breakout_render_rgb(const void *state, uint8_t *rgb) {
    ShoalCanvas c = shoal_canvas(rgb, BREAKOUT_RGB_W, BREAKOUT_RGB_H, 3, BREAKOUT_VIEW_X0, BREAKOUT_VIEW_Y0,
                                 BREAKOUT_VIEW_X1, BREAKOUT_VIEW_Y1);
    breakout_draw((const Breakout *)state, &c);
}

static inline void breakout_write_header(const Breakout *b, float *obs) {
    obs[0] = b->paddle_x * (1.0f / BREAKOUT_W);
    obs[1] = 2.0f * b->paddle_half * (1.0f / BREAKOUT_W);
    obs[2] = b->ball_x * (1.0f / BREAKOUT_W);
    obs[3] = b->ball_y * (1.0f / BREAKOUT_H);
    obs[4] = b->ball_vx * b->inv_top_speed;
    obs[5] = b->ball_vy * b->inv_top_speed;
    obs[6] = (float)b->balls / (float)b->max_balls;
    obs[7] = (float)b->score * (1.0f / BREAKOUT_MAX_SCORE);
    obs[8] = (float)b->wall;
    obs[9] = (float)b->level * 0.25f;
}

static void breakout_fill_wall(Breakout *b, float *obs) {
    memset(b->bricks, 1, sizeof(b->bricks));
    b->bricks_left = BREAKOUT_BRICKS;
    if (b->pixels.enabled) return; /* the row holds frames, not brick flags */
    for (int i = 0; i < BREAKOUT_BRICKS; i++) obs[BREAKOUT_HEADER + i] = 1.0f;
}

/* The observation of the state after a step: the header (the brick flags are kept up to date
 * as bricks fall), or the stack shifted by one frame with the new frame last. */
static inline void breakout_observe(const Breakout *b, void *obs) {
    if (__builtin_expect(b->pixels.enabled, 0)) {
        breakout_draw_gray(b, shoal_push_frame((uint8_t *)obs, b->pixels));
        return;
    }
    breakout_write_header(b, (float *)obs);
}

/* A new ball from a random column below the bricks, heading down at 30-50 degrees. */
static void breakout_serve(Breakout *b, EnvIO *io) {
    b->speed = b->base_speed;
    b->level = 0;
    b->brick_hits = 0;
    b->hit_orange = 0;
    b->hit_red = 0;
    b->shrunk = 0;
    b->paddle_half = b->full_half;
    if (b->paddle_x < b->paddle_half) b->paddle_x = b->paddle_half;
    if (b->paddle_x > BREAKOUT_W - b->paddle_half) b->paddle_x = BREAKOUT_W - b->paddle_half;
    b->ball_x = 16.0f + shoal_rand_float(&io->rng) * (BREAKOUT_W - 32.0f);
    b->ball_y = BREAKOUT_SERVE_Y;
    float angle = (30.0f + 20.0f * shoal_rand_float(&io->rng)) * (3.14159265f / 180.0f);
    float side = (shoal_rand_u64(&io->rng) >> 63) ? 1.0f : -1.0f;
    b->ball_vx = side * b->speed * sinf(angle);
    b->ball_vy = b->speed * cosf(angle);
}

static void breakout_start(Breakout *b, EnvIO *io) {
    b->balls = b->max_balls;
    b->score = 0;
    b->wall = 0;
    b->frames = 0;
    b->steps = 0;
    b->paddle_x = 0.5f * BREAKOUT_W;
    breakout_fill_wall(b, (float *)io->obs);
    breakout_serve(b, io);
    if (b->pixels.enabled) {
        /* A new episode has no history: every slot of the stack holds its first frame. */
        breakout_draw_gray(b, shoal_newest_frame((uint8_t *)io->obs, b->pixels));
        shoal_fill_stack((uint8_t *)io->obs, b->pixels);
        return;
    }
    breakout_write_header(b, (float *)io->obs);
}

static void breakout_reset(void *state, EnvIO *io) {
    breakout_start((Breakout *)state, io);
    io->rewards[0] = 0.0f;
    io->terminals[0] = 0;
    io->truncations[0] = 0;
}

static inline int breakout_row(float y) {
    int row = (int)((y - BREAKOUT_BRICK_TOP) * (1.0f / BREAKOUT_BRICK_H));
    return row < BREAKOUT_ROWS - 1 ? row : BREAKOUT_ROWS - 1;
}

static void breakout_step(void *state, EnvIO *io) {
    Breakout *b = (Breakout *)state;
    float *obs = (float *)io->obs;
    int action = io->actions[0];
    float dp = (float)((action == 2) - (action == 1)) * b->paddle_speed;
    float px = b->paddle_x, half = b->paddle_half;
    float bx = b->ball_x, by = b->ball_y, vx = b->ball_vx, vy = b->ball_vy;
    int gained = 0;
    int terminal = 0;
    int frame = 0;
    const int frameskip = b->frameskip;

    while (frame < frameskip) {
        frame++;
        px = fminf(fmaxf(px + dp, half), BREAKOUT_W - half);
        bx += vx;
        by += vy;
        if (bx < 0.0f) {
            bx = -bx;
            vx = -vx;
        } else if (bx > BREAKOUT_W) {
            bx = 2.0f * BREAKOUT_W - bx;
            vx = -vx;
        }
        if (__builtin_expect(by < 0.0f, 0)) {
            by = -by;
            vy = -vy;
            if (b->shrink && !b->shrunk) {
                b->shrunk = 1;
                half = 0.5f * b->full_half;
            }
        } else if (by >= BREAKOUT_BRICK_TOP && by < BREAKOUT_BRICK_BOTTOM) {
            int row = breakout_row(by);
            int col = (int)(bx * (1.0f / BREAKOUT_BRICK_W));
            col = col < BREAKOUT_COLS - 1 ? col : BREAKOUT_COLS - 1;
            int idx = row * BREAKOUT_COLS + col;
            if (b->bricks[idx]) {
                b->bricks[idx] = 0;
                if (!b->pixels.enabled) obs[BREAKOUT_HEADER + idx] = 0.0f;
                int points = (int)BREAKOUT_POINTS[row];
                gained += points;
                b->score += points;
                b->bricks_left--;
                /* Entered the brick's row from above or below: vertical bounce; else sideways. */
                float py = by - vy;
                int from_outside = py < BREAKOUT_BRICK_TOP || py >= BREAKOUT_BRICK_BOTTOM;
                if (from_outside || breakout_row(py) != row) vy = -vy;
                else vx = -vx;
                b->brick_hits++;
                b->hit_orange |= row == 1;
                b->hit_red |= row == 0;
                int level = (b->brick_hits >= 4) + (b->brick_hits >= 12) + b->hit_orange + b->hit_red;
                if (level != b->level) {
                    float speed = b->base_speed * (1.0f + 0.25f * (float)level);
                    float scale = speed / b->speed;
                    vx *= scale;
                    vy *= scale;
                    b->speed = speed;
                    b->level = level;
                }
                if (b->bricks_left == 0) {
                    if (b->wall == 0) {
                        b->wall = 1;
                        breakout_fill_wall(b, obs);
                    } else {
                        terminal = 1;
                        break;
                    }
                }
            }
        } else if (by >= BREAKOUT_PADDLE_Y) {
            if (vy > 0.0f && by - vy < BREAKOUT_PADDLE_Y && fabsf(bx - px) <= half + b->ball_half) {
                float offset = fminf(fmaxf((bx - px) / half, -1.0f), 1.0f);
                float angle = offset * BREAKOUT_MAX_ANGLE;
                vx = b->speed * sinf(angle);
                vy = -b->speed * cosf(angle);
                by = 2.0f * BREAKOUT_PADDLE_Y - by;
            } else if (by >= BREAKOUT_H) {
                b->balls--;
                if (b->balls <= 0) {
                    terminal = 1;
                    break;
                }
                b->paddle_x = px;
                breakout_serve(b, io);
                px = b->paddle_x;
                half = b->paddle_half;
                bx = b->ball_x;
                by = b->ball_y;
                vx = b->ball_vx;
                vy = b->ball_vy;
            }
        }
    }

    b->paddle_x = px;
    b->paddle_half = half;
    b->ball_x = bx;
    b->ball_y = by;
    b->ball_vx = vx;
    b->ball_vy = vy;
    b->frames += frame;
    b->steps++;
    int truncated = !terminal && b->frames >= b->max_frames;
    io->rewards[0] = (float)gained;
    io->terminals[0] = (uint8_t)terminal;
    io->truncations[0] = (uint8_t)truncated;
    if (__builtin_expect(terminal | truncated, 0)) {
        shoal_log_episode(io, b->score, b->score, b->steps);
        if (truncated) {
            breakout_observe(b, io->obs);
            shoal_save_final_obs(io, 0, b->obs_size, b->obs_dtype);
        }
        breakout_start(b, io);
        return;
    }
    breakout_observe(b, io->obs);
}

/* Appends to a bounded buffer; render output is truncated rather than overflowing. */
typedef struct {
    char *buf;
    size_t len, pos;
} BreakoutText;

static void breakout_put(BreakoutText *t, const char *s) {
    while (*s && t->pos + 1 < t->len) t->buf[t->pos++] = *s++;
    if (t->len) t->buf[t->pos < t->len ? t->pos : t->len - 1] = 0;
}

static int breakout_render(void *state, char *buf, size_t len) {
    static const char *const colours[BREAKOUT_ROWS] = {"\x1b[91m", "\x1b[33m", "\x1b[93m",
                                                      "\x1b[32m", "\x1b[36m", "\x1b[34m"};
    const Breakout *b = (const Breakout *)state;
    BreakoutText t = {buf, len, 0};
    char line[128];
    snprintf(line, sizeof(line), "score %d  balls %d  wall %d  speed level %d\n", b->score, b->balls,
             b->wall + 1, b->level);
    breakout_put(&t, line);
    /* One character per 4 x 6 pixels: a brick is two characters, a brick row one line. */
    const int cols = (int)(BREAKOUT_W / 4.0f), lines = (int)(BREAKOUT_H / BREAKOUT_BRICK_H) + 1;
    int ball_col = (int)(b->ball_x / 4.0f), ball_line = (int)(b->ball_y / BREAKOUT_BRICK_H);
    int paddle_line = (int)(BREAKOUT_PADDLE_Y / BREAKOUT_BRICK_H);
    int p_lo = (int)((b->paddle_x - b->paddle_half) / 4.0f), p_hi = (int)((b->paddle_x + b->paddle_half - 0.01f) / 4.0f);
    int first_row_line = (int)(BREAKOUT_BRICK_TOP / BREAKOUT_BRICK_H);
    breakout_put(&t, "+");
    for (int c = 0; c < cols; c++) breakout_put(&t, "-");
    breakout_put(&t, "+\n");
    for (int l = 0; l < lines; l++) {
        breakout_put(&t, "|");
        int row = l - first_row_line;
        int brick_row = row >= 0 && row < BREAKOUT_ROWS;
        if (brick_row) breakout_put(&t, colours[row]);
        for (int c = 0; c < cols; c++) {
            if (l == ball_line && c == ball_col) {
                breakout_put(&t, "\x1b[97mo");
                if (brick_row) breakout_put(&t, colours[row]);
                else breakout_put(&t, "\x1b[0m");
            } else if (brick_row && b->bricks[row * BREAKOUT_COLS + c / 2]) {
                breakout_put(&t, "#");
            } else if (l == paddle_line && c >= p_lo && c <= p_hi) {
                breakout_put(&t, "=");
            } else {
                breakout_put(&t, " ");
            }
        }
        if (brick_row) breakout_put(&t, "\x1b[0m");
        breakout_put(&t, "|\n");
    }
    return (int)t.pos;
}

static const GameDef breakout_game = {
    .name = "breakout",
    .description = "Atari Breakout rules: 18x6 bricks (7,7,4,4,1,1 pts), 5 balls, two walls; 3 actions, 118 floats",
    .state_size = sizeof(Breakout),
    .options = breakout_options,
    .num_options = BREAKOUT_NUM_OPTIONS,
    .configure = breakout_configure,
    .init = breakout_init,
    .reset = breakout_reset,
    .step = breakout_step,
    .render = breakout_render,
    .close = NULL,
    .render_rgb = breakout_render_rgb,
    .rgb_width = BREAKOUT_RGB_W,
    .rgb_height = BREAKOUT_RGB_H,
};

#endif
