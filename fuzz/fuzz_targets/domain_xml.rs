#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (kvmio_fuzz::target("domain_xml")
        .expect("a kvmio-fuzz target")
        .run)(data)
});
