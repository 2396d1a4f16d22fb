// Callgrind's client requests as functions Swift can call: instructions are counted only between
// sb_callgrind_start() and sb_callgrind_stop() when the probe runs under
// `valgrind --tool=callgrind --collect-atstart=no`. Outside valgrind they are a few no-op instructions.
#pragma once
#include <valgrind/callgrind.h>

static inline void sb_callgrind_start(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_TOGGLE_COLLECT; }
static inline void sb_callgrind_stop(void) { CALLGRIND_TOGGLE_COLLECT; }
static inline int sb_running_on_valgrind(void) { return RUNNING_ON_VALGRIND ? 1 : 0; }
