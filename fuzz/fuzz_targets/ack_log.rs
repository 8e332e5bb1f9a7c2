#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (kvmio_fuzz::target("ack_log")
        .expect("a kvmio-fuzz target")
        .run)(data)
});
