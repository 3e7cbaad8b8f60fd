/* Intentionally empty: bcc includes this file; klptrace needs nothing from it. */
