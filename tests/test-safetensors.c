#include "test.h"
int main(void)
{
    return sw_test_summary("test-safetensors");
}
