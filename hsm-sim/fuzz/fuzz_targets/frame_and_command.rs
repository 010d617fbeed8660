//! The server's frame and command parser on arbitrary bytes: the first byte
//! picks the header length, the rest is a message. Whatever parses must encode
//! and parse back to itself.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&header, message)) = data.split_first() else { return };
    let header_length = usize::from(header % 8);
    if let Ok(request) = hsm_sim::parse_message(message, header_length) {
        assert_eq!(request.check(), Ok(()));
        let encoded = request.encode();
        assert_eq!(hsm_sim::Request::parse(request.code(), &encoded), Ok(request));
    }
});
