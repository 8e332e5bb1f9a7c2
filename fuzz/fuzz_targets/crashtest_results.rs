#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (kvmio_fuzz::target("crashtest_results")
        .expect("a kvmio-fuzz target")
        .run)(data)
});
