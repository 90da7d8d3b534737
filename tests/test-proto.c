/*
 * test-proto.c - the generated wire schema builds, links, and round-trips an Envelope;
 * a truncated encoding is refused by the generated decoder.
 */
#include "swarmd.pb-c.h"
#include "test.h"
#include "util/error.h"

static void test_envelope_roundtrip(void)
{
    Swarmd__Envelope e = SWARMD__ENVELOPE__INIT, *d;
    uint8_t buf[256];
    size_t n;

    e.call_id = 0x1234567890ull;
    e.method = "inference_step";
    e.status = -1001;
    e.flags = SWARMD__ENVELOPE__FLAG__FLAG_REPLY;
    e.payload_len = 16384;
    n = swarmd__envelope__get_packed_size(&e);
    SW_CHECK(n < sizeof(buf));
    SW_CHECK(swarmd__envelope__pack(&e, buf) == n);
    d = swarmd__envelope__unpack(NULL, n, buf);
    SW_CHECK(d != NULL);
    SW_CHECK(d->call_id == e.call_id && d->status == -1001 && d->payload_len == 16384);
    SW_CHECK(strcmp(d->method, "inference_step") == 0);
    swarmd__envelope__free_unpacked(d, NULL);
    /* cut inside the method string: must be refused, not read past the end */
    d = swarmd__envelope__unpack(NULL, 10, buf);
    SW_CHECK(d == NULL);
}

int main(void)
{
    SW_RUN(test_envelope_roundtrip);
    return sw_test_summary("test-proto");
}
