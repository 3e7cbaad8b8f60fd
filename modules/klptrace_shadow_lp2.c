// SPDX-License-Identifier: GPL-2.0
/*
 * klptrace_shadow_lp2: livepatch B of klptrace_shadow.h's state, version 1,
 * cumulative (.replace = true): it takes the state and the shadow variables
 * over from an installed version 1 (klptrace_shadow_lp1), whose callbacks then
 * no longer run, and is refused once version 2 (klptrace_shadow_lp3) is
 * installed. klptrace_shadow_lp.h has the code and the scenarios.
 */
#define KLPTRACE_SHADOW_LP_VERSION	1
#define KLPTRACE_SHADOW_LP_REPLACE	true
#include "klptrace_shadow_lp.h"

MODULE_DESCRIPTION("klptrace: state version 1, cumulative, takes shadow variables over");
