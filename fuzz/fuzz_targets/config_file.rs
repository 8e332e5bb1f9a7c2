#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (kvmio_fuzz::target("config_file")
        .expect("a kvmio-fuzz target")
        .run)(data)
});
