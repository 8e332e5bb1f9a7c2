#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (kvmio_fuzz::target("record")
        .expect("a kvmio-fuzz target")
        .run)(data)
});
