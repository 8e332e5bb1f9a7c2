#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (kvmio_fuzz::target("guest_message")
        .expect("a kvmio-fuzz target")
        .run)(data)
});
