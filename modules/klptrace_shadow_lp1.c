// SPDX-License-Identifier: GPL-2.0
/*
 * klptrace_shadow_lp1: livepatch A of klptrace_shadow.h's state, version 1,
 * not cumulative: it sets the state and the shadow variables up and tears
 * them down itself. klptrace_shadow_lp.h has the code and the scenarios.
 */
#define KLPTRACE_SHADOW_LP_VERSION	1
#define KLPTRACE_SHADOW_LP_REPLACE	false
#include "klptrace_shadow_lp.h"

MODULE_DESCRIPTION("klptrace: state version 1, not cumulative, sets up shadow variables");
