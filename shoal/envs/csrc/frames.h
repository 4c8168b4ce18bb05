/*
 * Pictures of a game's state, drawn in C: filled rectangles in game coordinates onto a
 * grayscale (1 channel) or RGB (3 channel) frame. The same drawing code of a game makes the
 * grayscale frames of its pixel observations and the RGB frames of render_rgb, so what the
 * agent sees and what a GIF shows cannot drift apart.
 *
 * A rectangle covers the pixels whose centres lie inside it; one thinner than a pixel still
 * covers the pixel holding its middle, so no object ever vanishes from a small frame. Only
 * float arithmetic that is the same on every thread is used: frames are deterministic.
 *
 * Pixel observations: the options below (SHOAL_PIXEL_OPTIONS) select them; the observation
 * row holds `frame_stack` frames of frame_size x frame_size bytes, oldest first. The row itself
 * is the frame history: a step shifts it one frame older and draws the newest frame in the last
 * slot, so stepping allocates nothing.
 */
#ifndef SHOAL_FRAMES_H
#define SHOAL_FRAMES_H

#include "env_api.h"

#define SHOAL_OBS_VECTOR 0
#define SHOAL_OBS_PIXELS 1
#define SHOAL_NUM_PIXEL_OPTIONS 3

/* Appended to a game's option list; the Python side maps obs = 'vector' / 'pixels' to 0 / 1. */
#define SHOAL_PIXEL_OPTIONS                                                                        \
    {"obs", SHOAL_OBS_VECTOR, SHOAL_OBS_VECTOR, SHOAL_OBS_PIXELS, 1,                               \
     "'vector' (the state as numbers) or 'pixels' (grayscale frames drawn in C)"},              \
        {"frame_size", 84, 36, 256, 1, "obs='pixels' only: side of the square frame in pixels"},   \
        {"frame_stack", 4, 1, 8, 1, "obs='pixels' only: frames per observation, oldest first"}

/* An object's colour: its gray level in pixel observations and its RGB in render_rgb. */
typedef struct {
    uint8_t gray;
    uint8_t rgb[3];
} ShoalColour;

typedef struct {
    uint8_t *pixels; /* height rows of width * channels bytes */
    int width, height, channels;
    float origin_x, origin_y; /* game coordinates of the frame's top-left corner */
    float scale_x, scale_y;   /* pixels per game unit */
} ShoalCanvas;

/* The pixel-observation settings a game keeps in its state. */
typedef struct {
    int enabled;
    int size;  /* frame side */
    int stack; /* frames per observation */
} ShoalPixelMode;

/* A canvas showing the game area [x0, x1) x [y0, y1) on a width x height frame. */
static inline ShoalCanvas shoal_canvas(uint8_t *pixels, int width, int height, int channels, float x0,
                                       float y0, float x1, float y1) {
    ShoalCanvas c = {pixels, width, height, channels, x0, y0, (float)width / (x1 - x0),
                     (float)height / (y1 - y0)};
    return c;
}

/* Pixels [*first, *end) whose centres lie in [lo, hi) (frame units), at least the middle one,
 * clipped to [0, limit). Returns whether any is left. */
static inline int shoal_span(float lo, float hi, int limit, int *first, int *end) {
    int a = (int)ceilf(lo - 0.5f), b = (int)ceilf(hi - 0.5f);
    if (b <= a) {
        a = (int)floorf(0.5f * (lo + hi));
        b = a + 1;
    }
    *first = a < 0 ? 0 : a;
    *end = b > limit ? limit : b;
    return *end > *first;
}

static inline void shoal_fill_rect(const ShoalCanvas *c, float x0, float y0, float x1, float y1,
                                   ShoalColour colour) {
    int c0, c1, r0, r1;
    if (!shoal_span((x0 - c->origin_x) * c->scale_x, (x1 - c->origin_x) * c->scale_x, c->width, &c0, &c1) ||
        !shoal_span((y0 - c->origin_y) * c->scale_y, (y1 - c->origin_y) * c->scale_y, c->height, &r0, &r1))
        return;
    size_t stride = (size_t)c->width * (size_t)c->channels;
    for (int r = r0; r < r1; r++) {
        uint8_t *row = c->pixels + (size_t)r * stride;
        if (c->channels == 1) {
            memset(row + c0, colour.gray, (size_t)(c1 - c0));
            continue;
        }
        for (int x = c0; x < c1; x++) memcpy(row + 3 * (size_t)x, colour.rgb, 3);
    }
}

static inline void shoal_clear(const ShoalCanvas *c, ShoalColour colour) {
    size_t pixels = (size_t)c->width * (size_t)c->height;
    if (c->channels == 1) {
        memset(c->pixels, colour.gray, pixels);
        return;
    }
    for (size_t i = 0; i < pixels; i++) memcpy(c->pixels + 3 * i, colour.rgb, 3);
}

/* The mode chosen by the SHOAL_PIXEL_OPTIONS values starting at opt[first]. */
static inline ShoalPixelMode shoal_pixel_mode(const double *opt, int first) {
    ShoalPixelMode m = {(int)opt[first] == SHOAL_OBS_PIXELS, (int)opt[first + 1], (int)opt[first + 2]};
    return m;
}

/* Fill `info`'s observation fields for pixel observations. */
static inline void shoal_pixel_info(GameInfo *info, ShoalPixelMode m) {
    info->obs_size = m.stack * m.size * m.size;
    info->obs_dtype = SHOAL_UINT8;
    info->obs_low = 0.0f;
    info->obs_high = 255.0f;
    info->frame_stack = m.stack;
    info->frame_height = m.size;
    info->frame_width = m.size;
}

/* The newest frame's slot of the stack in `obs` (the last). */
static inline uint8_t *shoal_newest_frame(uint8_t *obs, ShoalPixelMode m) {
    return obs + (size_t)m.size * (size_t)m.size * (size_t)(m.stack - 1);
}

/* Shift the stack in `obs` one frame older; returns the newest frame's slot (the last). */
static inline uint8_t *shoal_push_frame(uint8_t *obs, ShoalPixelMode m) {
    size_t frame = (size_t)m.size * (size_t)m.size;
    if (m.stack > 1) memmove(obs, obs + frame, frame * (size_t)(m.stack - 1));
    return obs + frame * (size_t)(m.stack - 1);
}

/* After a reset: copy the newest frame (the last slot) into every older slot. */
static inline void shoal_fill_stack(uint8_t *obs, ShoalPixelMode m) {
    size_t frame = (size_t)m.size * (size_t)m.size;
    const uint8_t *newest = obs + frame * (size_t)(m.stack - 1);
    for (int k = 0; k < m.stack - 1; k++) memcpy(obs + frame * (size_t)k, newest, frame);
}

#endif
