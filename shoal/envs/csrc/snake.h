/*
 * Snake, multi-agent: `num_snakes` snakes share one grid (agents_per_env = num_snakes).
 *
 * Each agent sees the (2 * vision + 1)^2 cells around its head, not rotated (uint8):
 *   0 empty, 1 wall (outside the grid), 2 food, 3 own body, 4 another snake.
 * Actions: 0 up, 1 down, 2 left, 3 right; the action opposite to the current heading is
 * ignored. Snakes move one after another in index order each step, so the outcome of two
 * snakes racing for a cell is fixed (and deterministic).
 * Eating food gives `food_reward` and grows the snake by one (up to `max_length`; a snake
 * at full length still eats and scores the reward). Moving into a wall or any body
 * (its own included; the cell its tail leaves this step is free) kills the snake:
 * `death_reward`, a terminal, its episode is logged (score = its length at death) and it
 * respawns, length 1, on a random free cell (random probes, then one bounded scan). There is
 * always one: configure keeps num_snakes + num_food within the grid and a death frees at
 * least the dead snake's cell; should none be found, the snake waits (zero observation,
 * reward 0) and retries on later steps rather than loop. Food is topped back up to
 * `num_food` with a bounded number of tries per step. Episodes longer than `max_steps`
 * agent steps are truncated (then respawned) so a snake that never dies still logs.
 */
#ifndef SHOAL_SNAKE_H
#define SHOAL_SNAKE_H

#include "env_api.h"
#include "frames.h"

#include <stdio.h>
#include <stdlib.h>

#define SNAKE_EMPTY 0
#define SNAKE_WALL 1
#define SNAKE_FOOD 2
#define SNAKE_FIRST_ID 3 /* grid value of snake i is SNAKE_FIRST_ID + i */
#define SNAKE_SPAWN_TRIES 64
#define SNAKE_FOOD_TRIES 16
#define SNAKE_CHUNK 16 /* window rows are mapped 16 cells at a time */
#define SNAKE_MAX_VISION 15

typedef struct {
    int head_slot; /* index of the head in this snake's ring of body cells */
    int length;    /* 0 while waiting for a free cell */
    int dir;
    int steps;
    float episode_return;
} SnakeAgent;

typedef struct {
    /* options */
    int width, height, num_snakes, num_food, vision, max_length, max_steps;
    float food_reward, death_reward;
    /* derived */
    int stride, window, obs_size;
    int delta[4];
    /* allocated in init */
    uint16_t *grid;    /* (height + 2 vision) rows of stride cells, then SNAKE_CHUNK slack
                          cells; the margin and the slack are wall */
    int32_t *body;     /* num_snakes rings of max_length cell indices */
    SnakeAgent *agents;
    int32_t *pending;  /* snakes to respawn at the end of a step */
    int food_missing;
} Snake;

static const OptionSpec snake_options[] = {
    {"width", 640, 8, 4096, 1, "grid width in cells"},
    {"height", 360, 8, 4096, 1, "grid height in cells"},
    {"num_snakes", 256, 1, 8192, 1, "snakes (agents) per env"},
    {"num_food", 4096, 0, 1e7, 1, "food kept on the grid"},
    {"vision", 5, 1, SNAKE_MAX_VISION, 1, "each agent sees the (2 vision + 1)^2 cells around its head"},
    {"max_length", 128, 2, 65536, 1, "longest a snake can grow"},
    {"food_reward", 0.1, -10.0, 10.0, 0, "reward for eating food"},
    {"death_reward", -1.0, -10.0, 10.0, 0, "reward for dying"},
    {"max_steps", 4096, 0, 1e8, 1, "truncate a snake's episode after this many steps (0 = never)"},
};

static int snake_configure(GameInfo *info, const double *opt, char *err, size_t err_len) {
    double cells = opt[0] * opt[1];
    if (opt[2] + opt[3] > cells) {
        snprintf(err, err_len,
                 "num_snakes + num_food must fit on the grid (width * height = %.0f cells), "
                 "got %.0f + %.0f",
                 cells, opt[2], opt[3]);
        return 1;
    }
    int window = 2 * (int)opt[4] + 1;
    info->obs_size = window * window;
    info->obs_dtype = SHOAL_UINT8;
    info->obs_low = 0.0f;
    info->obs_high = 4.0f;
    info->agents_per_env = (int)opt[2];
    info->num_action_dims = 1;
    info->action_nvec[0] = 4;
    return 0;
}

static void snake_init(void *state, const double *opt, EnvIO *io) {
    (void)io;
    Snake *s = (Snake *)state;
    s->width = (int)opt[0];
    s->height = (int)opt[1];
    s->num_snakes = (int)opt[2];
    s->num_food = (int)opt[3];
    s->vision = (int)opt[4];
    s->max_length = (int)opt[5];
    s->food_reward = (float)opt[6];
    s->death_reward = (float)opt[7];
    s->max_steps = (int)opt[8];
    s->stride = s->width + 2 * s->vision;
    s->window = 2 * s->vision + 1;
    s->obs_size = s->window * s->window;
    s->delta[0] = -s->stride;
    s->delta[1] = s->stride;
    s->delta[2] = -1;
    s->delta[3] = 1;
    size_t rows = (size_t)s->height + 2 * (size_t)s->vision;
    s->grid = (uint16_t *)malloc((rows * (size_t)s->stride + SNAKE_CHUNK) * sizeof(uint16_t));
    s->body = (int32_t *)malloc((size_t)s->num_snakes * (size_t)s->max_length * sizeof(int32_t));
    s->agents = (SnakeAgent *)calloc((size_t)s->num_snakes, sizeof(SnakeAgent));
    s->pending = (int32_t *)malloc((size_t)s->num_snakes * sizeof(int32_t));
}

static void snake_close(void *state) {
    Snake *s = (Snake *)state;
    free(s->grid);
    free(s->body);
    free(s->agents);
    free(s->pending);
    s->grid = NULL;
    s->body = NULL;
    s->agents = NULL;
    s->pending = NULL;
}

/* Without its memory (init's malloc failed) the env only emits zero observations and
 * rewards: the contract gives init no way to fail, and crashing the process is worse. */
static inline int snake_ready(const Snake *s) {
    return s->grid && s->body && s->agents && s->pending;
}

static inline int snake_cell(const Snake *s, int x, int y) {
    return (y + s->vision) * s->stride + x + s->vision;
}

/* A random empty cell, or -1. Random probes first; when they all miss (a crowded grid),
 * one scan from a random start finds any free cell left, so the cost is bounded. */
static int snake_free_cell(Snake *s, uint64_t *rng, int scan) {
    for (int t = 0; t < SNAKE_SPAWN_TRIES; t++) {
        int c = snake_cell(s, shoal_rand_int(rng, s->width), shoal_rand_int(rng, s->height));
        if (s->grid[c] == SNAKE_EMPTY) return c;
    }
    if (!scan) return -1;
    int cells = s->width * s->height;
    int start = shoal_rand_int(rng, cells);
    for (int k = 0; k < cells; k++) {
        int i = start + k < cells ? start + k : start + k - cells;
        int c = snake_cell(s, i % s->width, i / s->width);
        if (s->grid[c] == SNAKE_EMPTY) return c;
    }
    return -1;
}

static void snake_spawn(Snake *s, int i, uint64_t *rng) {
    SnakeAgent *a = &s->agents[i];
    a->steps = 0;
    a->episode_return = 0.0f;
    int c = snake_free_cell(s, rng, 1);
    if (c < 0) {
        a->length = 0;
        return;
    }
    a->head_slot = 0;
    a->length = 1;
    a->dir = shoal_rand_int(rng, 4);
    s->body[(size_t)i * s->max_length] = c;
    s->grid[c] = (uint16_t)(SNAKE_FIRST_ID + i);
}

static void snake_clear_body(Snake *s, int i) {
    SnakeAgent *a = &s->agents[i];
    const int32_t *ring = s->body + (size_t)i * s->max_length;
    int slot = a->head_slot;
    for (int k = 0; k < a->length; k++) {
        s->grid[ring[slot]] = SNAKE_EMPTY;
        slot = slot == 0 ? s->max_length - 1 : slot - 1;
    }
    a->length = 0;
}

static void snake_top_up_food(Snake *s, uint64_t *rng) {
    int missing = s->food_missing;
    for (int k = 0; k < missing; k++) {
        for (int t = 0; t < SNAKE_FOOD_TRIES; t++) {
            int c = snake_cell(s, shoal_rand_int(rng, s->width), shoal_rand_int(rng, s->height));
            if (s->grid[c] == SNAKE_EMPTY) {
                s->grid[c] = SNAKE_FOOD;
                s->food_missing--;
                break;
            }
        }
    }
}

static void snake_write_window(const Snake *s, int i, uint8_t *out) {
    const SnakeAgent *a = &s->agents[i];
    if (a->length == 0) {
        memset(out, 0, (size_t)s->obs_size);
        return;
    }
    int head = s->body[(size_t)i * s->max_length + a->head_slot];
    const uint16_t *row = s->grid + head - s->vision * s->stride - s->vision;
    const uint16_t me = (uint16_t)(SNAKE_FIRST_ID + i);
    const int w = s->window;
    /* Rows are short (11 cells by default), too short for the compiler's vectorised loop.
     * Fixed 16-cell chunks vectorise fully; the cells read past a row's end are the next
     * row's or the grid's slack, and only the first w mapped bytes are kept. */
    uint8_t mapped[2 * SNAKE_MAX_VISION + 1 + SNAKE_CHUNK];
    for (int r = 0; r < w; r++, row += s->stride, out += w) {
        for (int c0 = 0; c0 < w; c0 += SNAKE_CHUNK) {
            for (int c = 0; c < SNAKE_CHUNK; c++) {
                /* v < FIRST_ID: the cell code itself; a body: 3 if own, 4 if not. Written
                 * as 16-bit arithmetic, which the compiler vectorises (selects it does not). */
                uint16_t v = row[c0 + c];
                uint16_t body = v >= SNAKE_FIRST_ID;
                uint16_t other = v != me;
                mapped[c0 + c] = (uint8_t)(v + body * (uint16_t)(3 + other - v));
            }
        }
        memcpy(out, mapped, (size_t)w);
    }
}

static void snake_reset(void *state, EnvIO *io) {
    Snake *s = (Snake *)state;
    int n = s->num_snakes;
    memset(io->rewards, 0, (size_t)n * sizeof(float));
    memset(io->terminals, 0, (size_t)n);
    memset(io->truncations, 0, (size_t)n);
    if (!snake_ready(s)) {
        memset(io->obs, 0, (size_t)n * s->obs_size);
        return;
    }
    size_t rows = (size_t)s->height + 2 * (size_t)s->vision;
    for (size_t k = 0; k < rows * (size_t)s->stride + SNAKE_CHUNK; k++) s->grid[k] = SNAKE_WALL;
    for (int y = 0; y < s->height; y++) {
        memset(s->grid + snake_cell(s, 0, y), 0, (size_t)s->width * sizeof(uint16_t));
    }
    for (int i = 0; i < n; i++) {
        s->agents[i].length = 0;
        snake_spawn(s, i, &io->rng);
    }
    s->food_missing = s->num_food;
    snake_top_up_food(s, &io->rng);
    uint8_t *obs = (uint8_t *)io->obs;
    for (int i = 0; i < n; i++) snake_write_window(s, i, obs + (size_t)i * s->obs_size);
}

static void snake_step(void *state, EnvIO *io) {
    Snake *s = (Snake *)state;
    const int n = s->num_snakes, L = s->max_length;
    uint8_t *obs = (uint8_t *)io->obs;
    if (!snake_ready(s)) {
        snake_reset(state, io);
        return;
    }
    int num_pending = 0;
    for (int i = 0; i < n; i++) {
        SnakeAgent *a = &s->agents[i];
        io->terminals[i] = 0;
        io->truncations[i] = 0;
        io->rewards[i] = 0.0f;
        if (a->length == 0) { /* waiting for room to respawn */
            s->pending[num_pending++] = i;
            continue;
        }
        int act = io->actions[i];
        a->dir = act == (a->dir ^ 1) ? a->dir : act; /* 0<->1 and 2<->3 are opposites */
        int32_t *ring = s->body + (size_t)i * L;
        int next = ring[a->head_slot] + s->delta[a->dir];
        int ate = s->grid[next] == SNAKE_FOOD;
        int length_before = a->length;
        if (!ate || a->length == L) { /* the tail moves first, freeing its cell */
            int tail = a->head_slot - a->length + 1;
            tail += tail < 0 ? L : 0;
            s->grid[ring[tail]] = SNAKE_EMPTY;
            a->length--;
        }
        a->steps++;
        unsigned v = s->grid[next];
        if (v == SNAKE_EMPTY || v == SNAKE_FOOD) {
            a->head_slot = a->head_slot + 1 == L ? 0 : a->head_slot + 1;
            ring[a->head_slot] = next;
            s->grid[next] = (uint16_t)(SNAKE_FIRST_ID + i);
            a->length++;
            float r = ate ? s->food_reward : 0.0f;
            s->food_missing += ate;
            io->rewards[i] = r;
            a->episode_return += r;
            if (s->max_steps > 0 && a->steps >= s->max_steps) {
                io->truncations[i] = 1;
                s->pending[num_pending++] = i;
            }
        } else {
            io->rewards[i] = s->death_reward;
            io->terminals[i] = 1;
            a->episode_return += s->death_reward;
            shoal_log_episode(io, (double)length_before, (double)a->episode_return, (double)a->steps);
            snake_clear_body(s, i);
            s->pending[num_pending++] = i;
        }
    }
    /* Truncated snakes' last views come before any respawn changes the grid. */
    for (int k = 0; k < num_pending; k++) {
        int i = s->pending[k];
        if (!io->truncations[i]) continue;
        snake_write_window(s, i, (uint8_t *)io->final_obs + (size_t)i * s->obs_size);
        SnakeAgent *a = &s->agents[i];
        shoal_log_episode(io, (double)a->length, (double)a->episode_return, (double)a->steps);
    }
    for (int k = 0; k < num_pending; k++) {
        if (io->truncations[s->pending[k]]) snake_clear_body(s, s->pending[k]);
    }
    for (int k = 0; k < num_pending; k++) snake_spawn(s, s->pending[k], &io->rng);
    if (s->food_missing > 0) snake_top_up_food(s, &io->rng);
    for (int i = 0; i < n; i++) snake_write_window(s, i, obs + (size_t)i * s->obs_size);
}

#define SNAKE_VIEW_COLS 64
#define SNAKE_VIEW_ROWS 24

/* A crop of the grid around snake 0: '@' its head, 'o' its body, 'x' other snakes,
 * '*' food, '#' wall. */
static int snake_render(void *state, char *buf, size_t buf_len) {
    const Snake *s = (const Snake *)state;
    if (buf_len == 0) return 0;
    if (!snake_ready(s)) {
        buf[0] = '\0';
        return 0;
    }
    char pic[(SNAKE_VIEW_COLS + 1) * SNAKE_VIEW_ROWS + 1];
    char *q = pic;
    const SnakeAgent *a = &s->agents[0];
    int head = a->length > 0 ? s->body[a->head_slot] : snake_cell(s, s->width / 2, s->height / 2);
    int hx = head % s->stride - s->vision, hy = head / s->stride - s->vision;
    int x0 = hx - SNAKE_VIEW_COLS / 2, y0 = hy - SNAKE_VIEW_ROWS / 2;
    for (int r = 0; r < SNAKE_VIEW_ROWS; r++) {
        for (int c = 0; c < SNAKE_VIEW_COLS; c++) {
            int x = x0 + c, y = y0 + r;
            char ch = '#';
            if (x >= 0 && x < s->width && y >= 0 && y < s->height) {
                int cell = snake_cell(s, x, y);
                unsigned v = s->grid[cell];
                ch = v == SNAKE_EMPTY ? '.' : v == SNAKE_FOOD ? '*' : v == SNAKE_FIRST_ID ? 'o' : 'x';
                if (a->length > 0 && cell == head) ch = '@';
            }
            *q++ = ch;
        }
        *q++ = '\n';
    }
    *q = '\0';
    int n = snprintf(buf, buf_len, "snake 0: length %d, step %d (view %dx%d around its head)\n%s", a->length,
                     a->steps, SNAKE_VIEW_COLS, SNAKE_VIEW_ROWS, pic);
    if (n < 0) return 0;
    return (size_t)n < buf_len ? n : (int)(buf_len - 1);
}

#define SNAKE_RGB_COLS 64 /* cells shown by render_rgb, around snake 0's head */
#define SNAKE_RGB_ROWS 48
#define SNAKE_RGB_CELL 5  /* pixels per cell side */

static const ShoalColour SNAKE_RGB_EMPTY = {0, {12, 12, 16}};
static const ShoalColour SNAKE_RGB_WALL = {0, {110, 110, 110}};
static const ShoalColour SNAKE_RGB_FOOD = {0, {220, 60, 60}};
static const ShoalColour SNAKE_RGB_OWN = {0, {70, 190, 90}};
static const ShoalColour SNAKE_RGB_HEAD = {0, {170, 255, 150}};
static const ShoalColour SNAKE_RGB_OTHER = {0, {70, 110, 210}};

static ShoalColour snake_cell_colour(const Snake *s, int x, int y, int head) {
    if (x < 0 || x >= s->width || y < 0 || y >= s->height) return SNAKE_RGB_WALL;
    int cell = snake_cell(s, x, y);
    unsigned v = s->grid[cell];
    if (v == SNAKE_EMPTY) return SNAKE_RGB_EMPTY;
    if (v == SNAKE_FOOD) return SNAKE_RGB_FOOD;
    if (v != SNAKE_FIRST_ID) return SNAKE_RGB_OTHER;
    return cell == head ? SNAKE_RGB_HEAD : SNAKE_RGB_OWN;
}

/* The same crop as the text render, one square of SNAKE_RGB_CELL pixels per cell. */
static void snake_render_rgb(const void *state, uint8_t *rgb) {
    const Snake *s = (const Snake *)state;
    ShoalCanvas c = shoal_canvas(rgb, SNAKE_RGB_COLS * SNAKE_RGB_CELL, SNAKE_RGB_ROWS * SNAKE_RGB_CELL, 3, 0.0f,
                                 0.0f, (float)SNAKE_RGB_COLS, (float)SNAKE_RGB_ROWS);
    if (!snake_ready(s)) {
        shoal_clear(&c, SNAKE_RGB_EMPTY);
        return;
    }
    const SnakeAgent *a = &s->agents[0];
    int head = a->length > 0 ? s->body[a->head_slot] : snake_cell(s, s->width / 2, s->height / 2);
    int x0 = head % s->stride - s->vision - SNAKE_RGB_COLS / 2;
    int y0 = head / s->stride - s->vision - SNAKE_RGB_ROWS / 2;
    if (a->length == 0) head = -1;
    for (int r = 0; r < SNAKE_RGB_ROWS; r++) {
        for (int col = 0; col < SNAKE_RGB_COLS; col++) {
            ShoalColour colour = snake_cell_colour(s, x0 + col, y0 + r, head);
            shoal_fill_rect(&c, (float)col, (float)r, (float)col + 1.0f, (float)r + 1.0f, colour);
        }
    }
}

const GameDef snake_game = {
    "snake",
    "Many snakes on one grid (multi-agent); egocentric uint8 window; food grows, walls and bodies kill",
    sizeof(Snake),
    snake_options,
    (int)(sizeof(snake_options) / sizeof(snake_options[0])),
    snake_configure,
    snake_init,
    snake_reset,
    snake_step,
    snake_render,
    snake_close,
    snake_render_rgb,
    SNAKE_RGB_COLS * SNAKE_RGB_CELL,
    SNAKE_RGB_ROWS * SNAKE_RGB_CELL,
};

#endif
