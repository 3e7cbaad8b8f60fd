// SPDX-License-Identifier: GPL-2.0
/*
 * klptrace_shadow_lp3: livepatch C of klptrace_shadow.h's state, version 2,
 * cumulative (.replace = true): it takes version 1 over (2 >= 1 is
 * compatible, kernel/livepatch/state.c klp_is_state_compatible()) and makes
 * any version 1 patch loaded after it incompatible.
 * klptrace_shadow_lp.h has the code and the scenarios.
 */
#define KLPTRACE_SHADOW_LP_VERSION	2
#define KLPTRACE_SHADOW_LP_REPLACE	true
#include "klptrace_shadow_lp.h"

MODULE_DESCRIPTION("klptrace: state version 2, cumulative, takes version 1 over");
