//! The bodies of the fuzz targets (`clearing/fuzz`), kept in the library so the
//! ordinary test suite runs them too (`clearing/tests/fuzz_bodies.rs`), on
//! random and hand-picked inputs.

use crate::api::bodies::{
    IssueCard, IssueCardRequest, ReplaceCard, ReplaceCardRequest, RequestBody, TopupAuthorise, TopupAuthoriseRequest,
    TopupConfirm, TopupConfirmRequest, TopupVoid, TopupVoidRequest,
};
use crate::batch;

/// A terminal batch document (`clearing-batch/1`) from untrusted bytes: no
/// panic; an accepted document accounts for every record it carried (kept or
/// refused, none dropped); every kept record re-encodes to a document that
/// parses back to the same record.
pub fn batch_document(data: &[u8]) {
    let Ok(parsed) = batch::parse(data) else {
        return;
    };
    assert_eq!(parsed.records.len(), parsed.raw_records.len(), "every record is kept or refused");
    for record in parsed.records.iter().flatten() {
        let document = batch::document(&parsed.terminal_id, &parsed.batch_id, std::slice::from_ref(record));
        let again = batch::parse_value(document).expect("a kept record re-encodes to a valid document");
        match again.records.as_slice() {
            [Ok(same)] => assert_eq!(same, record),
            other => panic!("a kept record came back as {other:?}"),
        }
    }
}

/// One JSON body parser of the API on untrusted bytes: no panic; a refusal is a
/// 422 naming a short field; an accepted body re-encodes (its documented wire
/// form) to JSON that parses back to the same body.
fn body<B, W>(data: &[u8])
where
    B: RequestBody + PartialEq + std::fmt::Debug,
    W: for<'a> From<&'a B> + serde::Serialize,
{
    match B::parse(data) {
        Ok(parsed) => {
            let wire = serde_json::to_vec(&W::from(&parsed)).expect("a wire form serialises");
            let again = B::parse(&wire).unwrap_or_else(|e| panic!("the re-encoded body is refused: {e}"));
            assert_eq!(again, parsed, "the re-encoded body parses back to itself");
        }
        Err(error) => {
            assert_eq!(error.status().as_u16(), 422, "{error}");
            let field = error.field_name().expect("a refusal names the field");
            assert!(!field.is_empty() && field.chars().count() <= 40, "field {field:?}");
        }
    }
}

/// Every JSON body the HTTP API parses, on the same bytes: the top-up
/// authorisation, confirmation and void, the issuer's issue and replacement,
/// and the batch document. (The loss report and the operators' requests carry
/// no body; their path and query parameters are strings parsed by the same
/// field checkers.)
pub fn http_bodies(data: &[u8]) {
    body::<TopupAuthorise, TopupAuthoriseRequest>(data);
    body::<TopupConfirm, TopupConfirmRequest>(data);
    body::<TopupVoid, TopupVoidRequest>(data);
    body::<IssueCard, IssueCardRequest>(data);
    body::<ReplaceCard, ReplaceCardRequest>(data);
    if let Err(error) = <batch::Batch as RequestBody>::parse(data) {
        assert_eq!(error.status().as_u16(), 422, "{error}");
        assert!(error.field_name().is_some(), "a refused batch names the field: {error}");
    }
    batch_document(data);
}
