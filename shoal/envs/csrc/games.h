/* Every game the binding knows. Add a game: include its header and list its GameDef. */
#ifndef SHOAL_GAMES_H
#define SHOAL_GAMES_H

#include "env_api.h"
#include "cartpole.h"
#include "breakout.h"
#include "pong.h"
#include "snake.h"
#include "bandit.h"
#include "memory.h"

static const GameDef *const SHOAL_GAMES[] = {
    &cartpole_game,
    &breakout_game,
    &pong_game,
    &snake_game,
    &bandit_game,
    &memory_game,
};

#endif
