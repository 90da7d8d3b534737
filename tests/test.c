/* test.c - storage for the counters declared in test.h. */
#include "test.h"

int sw_test_passed, sw_test_failed, sw_test_cur_failed;
const char *sw_test_name;
