//! The journal: intent → complete / void, durability across reopen, recovery
//! queries, flagging and the upload queue; and a journaled purchase torn at
//! every APDU, before and after the card acted, settled by the card.

mod common;

use card_host::card::CardType;
use card_host::vpcd::TearPoint;
use card_host::{ApplicationSerial, Fen, TransactionType};
use common::*;
use terminal::CardSession;
use terminal::journal::{Counts, Entry, Journal, JournalError, Resolution, UploadRecord};
use terminal::psam::PsamSession;
use terminal::purse::{PurchaseRequest, Purse};
use terminal::reader::InProcess;
use terminal::transaction::{self, Place, Recovered, TransactionError};

fn entry(serial: u64, counter: u16, amount: u32) -> Entry {
    Entry {
        card: ApplicationSerial(serial.to_be_bytes()),
        offline_counter: counter,
        kind: TransactionType::PursePurchase,
        amount: Fen(amount),
        balance_before: Fen(10_000),
        terminal: TERMINAL,
        terminal_serial: 7,
        at: at(8, 0, 0),
        route: Some(42),
        station: None,
        card_type: 1,
        reference: None,
    }
}

#[test]
fn intent_completes_and_survives_reopen() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("journal.sqlite");
    let journal = Journal::open(&path).expect("open");
    let intent = journal.write_intent(entry(1, 3, 200)).expect("intent");
    assert_eq!(intent.entry().transaction_number(), 4);
    // Dropped without closing, as a killed process would leave it.
    drop(intent);
    drop(journal);

    let journal = Journal::open(&path).expect("reopen");
    let mut unresolved = journal.unresolved().expect("unresolved");
    assert_eq!(unresolved.len(), 1);
    let intent = unresolved.remove(0);
    assert_eq!(intent.entry(), &entry(1, 3, 200));
    let completed = intent.complete(&journal, [1, 2, 3, 4], [5, 6, 7, 8], Resolution::Proof).expect("complete");
    drop(journal);

    let journal = Journal::open(&path).expect("reopen");
    assert!(journal.unresolved().expect("unresolved").is_empty());
    let card = ApplicationSerial(1u64.to_be_bytes());
    assert_eq!(journal.completed_for(&card).expect("completed"), vec![completed]);
    assert_eq!(journal.counts().expect("counts"), Counts { intents: 0, completed: 1, voided: 0, completed_fen: 200 });
}

#[test]
fn voided_intent_frees_the_number_and_a_number_is_used_once() {
    let directory = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(&directory.path().join("journal.sqlite")).expect("open");
    let first = journal.write_intent(entry(2, 0, 100)).expect("intent");
    let duplicate = journal.write_intent(entry(2, 0, 100)).expect_err("counter 0 is live already");
    assert!(matches!(duplicate, JournalError::Database(_)), "{duplicate}");
    first.void(&journal, Resolution::NoProof).expect("void");
    let again = journal.write_intent(entry(2, 0, 100)).expect("a voided number may be tried again");
    again.complete(&journal, [0; 4], [0; 4], Resolution::Answer).expect("complete");
    assert_eq!(journal.counts().expect("counts"), Counts { intents: 0, completed: 1, voided: 1, completed_fen: 100 });
}

#[test]
fn unresolved_intents_are_found_per_card_and_flagged_for_clearing() {
    let directory = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(&directory.path().join("journal.sqlite")).expect("open");
    let _ = journal.write_intent(entry(3, 0, 100)).expect("intent");
    let _ = journal.write_intent(entry(4, 0, 100)).expect("intent");
    let done = journal.write_intent(entry(4, 1, 300)).expect("intent");
    done.complete(&journal, [9; 4], [8; 4], Resolution::Answer).expect("complete");
    let card4 = ApplicationSerial(4u64.to_be_bytes());
    let card4_intents = journal.unresolved_for(&card4).expect("card 4");
    assert_eq!(card4_intents.len(), 1);
    assert_eq!(card4_intents[0].entry().offline_counter, 0);

    // Young intents wait for the card; old ones are flagged and go to clearing.
    assert_eq!(journal.flag_unresolved_older_than(std::time::Duration::from_secs(3600)).expect("flag"), 0);
    let pending = journal.pending_upload(100).expect("pending");
    assert_eq!(pending.len(), 1, "only the completed one");
    assert_eq!(journal.flag_unresolved_before(i64::MAX).expect("flag"), 2);
    let pending = journal.pending_upload(100).expect("pending");
    assert_eq!(pending.len(), 3);
    assert_eq!(pending.iter().filter(|record| matches!(record, UploadRecord::Unresolved { .. })).count(), 2);
    assert!(journal.unresolved().expect("unresolved").iter().all(|intent| intent.is_flagged()));

    let identity = journal.identity();
    let name = |first: i64, last: i64| terminal::upload::batch_id(&identity, first, last);
    let (batch, sealed) = journal.seal_batch(&TERMINAL, 10, name).expect("seal").expect("records wait");
    assert_eq!(sealed, pending, "the grey records sealed beside the completed row");
    assert_eq!(journal.mark_batch_uploaded(&batch).expect("uploaded"), 3);
    assert!(journal.pending_upload(100).expect("pending").is_empty());

    // A flagged intent the card settles later goes to clearing again, completed.
    let late = journal.unresolved_for(&card4).expect("card 4").remove(0);
    late.complete(&journal, [1; 4], [2; 4], Resolution::Proof).expect("complete");
    let pending = journal.pending_upload(100).expect("pending");
    assert!(matches!(pending.as_slice(), [UploadRecord::Completed(completed)] if completed.entry.card == card4));
    assert!(matches!(journal.pending_upload(terminal::journal::ROWS_MAX + 1), Err(JournalError::TooManyRows)));
}

#[test]
fn last_completed_since_finds_the_dedup_window() {
    let directory = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(&directory.path().join("journal.sqlite")).expect("open");
    let card = ApplicationSerial(5u64.to_be_bytes());
    assert_eq!(journal.last_completed_since(&card, &at(7, 0, 0)).expect("query"), None);
    let intent = journal.write_intent(entry(5, 0, 100)).expect("intent");
    intent.complete(&journal, [1; 4], [2; 4], Resolution::Answer).expect("complete");
    assert!(journal.last_completed_since(&card, &at(7, 59, 50)).expect("query").is_some());
    assert_eq!(journal.last_completed_since(&card, &at(8, 0, 1)).expect("query"), None);
}

#[test]
fn journaled_purchase_completes_with_the_cards_tac() {
    let directory = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(&directory.path().join("journal.sqlite")).expect("open");
    let mut card = InProcess::new(card(CardType::Ordinary, 10, Fen(1_000), 1));
    let mut psam_reader = InProcess::new(psam());
    let mut psam = PsamSession::open(CardSession::new(&mut psam_reader)).expect("PSAM");
    let mut purse = Purse::select(CardSession::new(&mut card)).expect("select");
    let request = PurchaseRequest { amount: Fen(200), at: at(8, 0, 0), compound_records: vec![] };
    let completed = transaction::purchase(&mut purse, &mut psam, &journal, &request, Place::default()).expect("buy");
    assert_eq!(completed.entry.amount, Fen(200));
    assert_eq!(completed.resolution, Resolution::Answer);
    let proof = purse.prove(TransactionType::PursePurchase, 1).expect("prove").expect("debited");
    assert_eq!((proof.tac, proof.mac), (completed.tac, completed.mac2));

    // Refused by the card (balance too low): nothing journaled, nothing debited.
    let too_much = PurchaseRequest { amount: Fen(5_000), ..request };
    let refused = transaction::purchase(&mut purse, &mut psam, &journal, &too_much, Place::default());
    assert!(matches!(refused, Err(TransactionError::Card(_))), "{refused:?}");
    assert_eq!(purse.balance().expect("balance"), Fen(800));
    assert_eq!(journal.counts().expect("counts"), Counts { intents: 0, completed: 1, voided: 0, completed_fen: 200 });
}

/// The card APDUs of one tap: SELECT, READ BINARY, [recovery], INITIALIZE,
/// [UPDATE CAPP DATA CACHE], DEBIT. The tear is tried at each in turn, before
/// and after the card acts, until a tap gets through untorn.
fn torn_at_every_apdu(compound: bool) {
    let directory = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(&directory.path().join("journal.sqlite")).expect("open");
    let start = Fen(10_000);
    let fare = Fen(150);
    let mut reader = Tearing::new(card(CardType::Ordinary, 20, start, 2));
    let mut psam_reader = InProcess::new(psam());
    let mut psam = PsamSession::open(CardSession::new(&mut psam_reader)).expect("PSAM");
    let records = if compound {
        let mut record = vec![0; 48];
        record[0] = card_host::issue::COMPOUND_BUS;
        record[1] = 46;
        record[3] = 1;
        vec![(card_host::issue::COMPOUND_BUS, record)]
    } else {
        vec![]
    };
    let kind = if compound { TransactionType::CompoundPurchase } else { TransactionType::PursePurchase };
    let request = PurchaseRequest { amount: fare, at: at(9, 0, 0), compound_records: records };
    let mut tears = 0;
    let mut debits_proved = 0;
    'apdus: for apdu in 1.. {
        assert!(apdu < 20, "a tap has fewer than 20 APDUs");
        for point in [TearPoint::BeforeCommand, TearPoint::AfterCommand] {
            reader.tear_at(apdu, point);
            let outcome =
                Purse::select(CardSession::new(&mut reader)).map_err(TransactionError::from).and_then(|mut purse| {
                    transaction::recover_card(&mut purse, &journal)?;
                    transaction::purchase(&mut purse, &mut psam, &journal, &request, Place::default())
                });
            if !reader.torn() {
                outcome.expect("an untorn tap completes");
                break 'apdus;
            }
            tears += 1;
            let error = outcome.expect_err("the card left");
            assert!(
                matches!(error, TransactionError::Torn { .. } | TransactionError::Card(_)),
                "torn at APDU {apdu} {point:?}: {error}"
            );

            // The card comes back: the terminal asks it, never guesses.
            reader.insert();
            let mut purse = Purse::select(CardSession::new(&mut reader)).expect("select");
            for recovered in transaction::recover_card(&mut purse, &journal).expect("recover") {
                if let Recovered::Completed(completed) = recovered {
                    assert_eq!(completed.resolution, Resolution::Proof);
                    debits_proved += 1;
                }
            }
            let counts = journal.counts().expect("counts");
            assert_eq!(counts.intents, 0, "torn at APDU {apdu} {point:?}: every intent settled");
            let balance = purse.balance().expect("balance");
            assert_eq!(
                u64::from(start.0 - balance.0),
                counts.completed_fen,
                "torn at APDU {apdu} {point:?}: the card and the journal agree"
            );
            // Every card debit is journaled with the card's own proof.
            let card = purse.public_information().application_serial;
            let completed = journal.completed_for(&card).expect("completed");
            let debits = purse.history().expect("history").iter().filter(|record| record.kind == kind).count();
            assert_eq!(debits, completed.len(), "torn at APDU {apdu} {point:?}: nothing lost");
            for row in &completed {
                let proof = purse.prove(kind, row.entry.transaction_number()).expect("prove").expect("on the card");
                assert_eq!((proof.tac, proof.mac), (row.tac, row.mac2));
            }
        }
    }
    assert!(tears >= 8, "SELECT, READ BINARY, INITIALIZE, DEBIT torn both ways");
    assert_eq!(debits_proved, 1, "only a tear after DEBIT leaves a debit to prove");
    let counts = journal.counts().expect("counts");
    assert_eq!(counts.completed, 2, "the proved debit and the final untorn one");
    assert_eq!(reader.card().image().purse.balance, Fen(start.0 - 2 * fare.0));
}

#[test]
fn purchase_torn_at_every_apdu_is_settled_by_the_card() {
    torn_at_every_apdu(false);
}

#[test]
fn compound_purchase_torn_at_every_apdu_is_settled_by_the_card() {
    torn_at_every_apdu(true);
}

/// Torn before DEBIT, then the card pays at another terminal (which uses the
/// same transaction number): its proof is not ours, and the intent is voided.
#[test]
fn a_number_used_by_another_terminal_voids_the_intent() {
    let directory = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(&directory.path().join("journal.sqlite")).expect("open");
    let mut reader = Tearing::new(card(CardType::Ordinary, 30, Fen(1_000), 3));
    let mut psam_reader = InProcess::new(psam());
    let mut psam = PsamSession::open(CardSession::new(&mut psam_reader)).expect("PSAM");
    let request = PurchaseRequest { amount: Fen(150), at: at(9, 0, 0), compound_records: vec![] };
    // SELECT, READ BINARY, INITIALIZE, then DEBIT never reaches the card.
    reader.tear_at(4, TearPoint::BeforeCommand);
    let mut purse = Purse::select(CardSession::new(&mut reader)).expect("select");
    let torn = transaction::purchase(&mut purse, &mut psam, &journal, &request, Place::default());
    assert!(matches!(torn, Err(TransactionError::Torn { .. })), "{torn:?}");
    reader.insert();

    // Another terminal (its own PSAM, its own journal) debits the card.
    let other_terminal = card_host::TerminalNumber([0x31, 0, 0, 0, 0, 0x99]);
    let mut other_psam_reader = InProcess::new(card_host::psam::Psam::new(
        card_host::psam::Psam::issue(&master_keys(), other_terminal, 1),
        card_host::storage::Storage::Memory,
    ));
    let mut other_psam = PsamSession::open(CardSession::new(&mut other_psam_reader)).expect("PSAM");
    let mut purse = Purse::select(CardSession::new(&mut reader)).expect("select");
    purse.purchase(&mut other_psam, &request).expect("paid elsewhere");

    // Back here: the card proves number 1, but its record is the other terminal's.
    let recovered = transaction::recover_card(&mut purse, &journal).expect("recover");
    assert!(matches!(recovered.as_slice(), [Recovered::Voided(_)]), "{recovered:?}");
    assert_eq!(journal.counts().expect("counts"), Counts { intents: 0, completed: 0, voided: 1, completed_fen: 0 });
    assert_eq!(purse.balance().expect("balance"), Fen(850), "only the other terminal's debit");
}

#[test]
fn a_sealed_batch_is_sent_again_unchanged_until_acknowledged() {
    let directory = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(&directory.path().join("journal.sqlite")).expect("open");
    let identity = journal.identity();
    let name = |first: i64, last: i64| terminal::upload::batch_id(&identity, first, last);
    let a = journal.write_intent(entry(6, 0, 100)).expect("intent");
    let open = journal.write_intent(entry(7, 0, 100)).expect("intent");
    let b = journal.write_intent(entry(8, 0, 100)).expect("intent");
    a.complete(&journal, [1; 4], [1; 4], Resolution::Answer).expect("complete");
    b.complete(&journal, [2; 4], [2; 4], Resolution::Answer).expect("complete");
    assert_eq!(journal.sealed_batch().expect("sealed"), None);
    let (id, rows) = journal.seal_batch(&TERMINAL, 10, name).expect("seal").expect("rows wait");
    assert_eq!(id, format!("{identity}-1-3"));
    assert_eq!(rows.iter().map(UploadRecord::id).collect::<Vec<_>>(), [1, 3]);
    // The row between them completes later: the sealed batch does not change ...
    open.complete(&journal, [3; 4], [3; 4], Resolution::Proof).expect("complete");
    assert_eq!(journal.sealed_batch().expect("sealed"), Some((id.clone(), rows.clone())));
    // ... and once it is acknowledged, the late row goes in a batch of its own.
    assert_eq!(journal.mark_batch_uploaded(&id).expect("uploaded"), 2);
    assert_eq!(journal.sealed_batch().expect("sealed"), None);
    let (late, rows) = journal.seal_batch(&TERMINAL, 10, name).expect("seal").expect("the late row");
    assert_eq!((late.as_str(), rows.len()), (format!("{identity}-2-2").as_str(), 1));
    let other = card_host::TerminalNumber([0x31, 0, 0, 0, 0, 0x99]);
    assert_eq!(journal.seal_batch(&other, 10, name).expect("seal"), None, "only this terminal's rows");
}

#[test]
fn each_journal_file_has_its_own_identity_for_life() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("journal.sqlite");
    let identity = Journal::open(&path).expect("open").identity();
    assert_eq!(identity.to_string().len(), 16);
    assert_eq!(Journal::open(&path).expect("reopen").identity(), identity, "kept across reopens");
    let reinstalled = Journal::open(&directory.path().join("reinstalled.sqlite")).expect("open").identity();
    assert_ne!(reinstalled, identity, "a new journal file, a new identity");

    // A journal made before migration 0004 (only 0001-0003 applied, a row in
    // it) gets an identity on its first open, and keeps it.
    let old = directory.path().join("old.sqlite");
    let migrations = directory.path().join("migrations-0001-0003");
    std::fs::create_dir(&migrations).expect("directory");
    for name in ["0001_journal.sql", "0002_upload_batches.sql", "0003_card_load.sql"] {
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(name);
        std::fs::copy(source, migrations.join(name)).expect("copy migration");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        use sqlx::ConnectOptions;
        let mut connection = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&old)
            .create_if_missing(true)
            .connect()
            .await
            .expect("old journal");
        sqlx::migrate::Migrator::new(migrations.as_path())
            .await
            .expect("migrations 0001-0003")
            .run(&mut connection)
            .await
            .expect("migrate");
        sqlx::query(
            "INSERT INTO card_transaction (card_serial, offline_counter, kind, amount_fen, balance_before_fen, \
             terminal_number, terminal_serial, card_date_time, at_unix_seconds, state, tac, mac2, resolution, \
             written_unix_ms) VALUES ('0000000000000009', 0, 6, 100, 1000, '310000000042', 1, '20261125080000', 0, \
             'completed', x'01010101', x'02020202', 'answer', 0)",
        )
        .execute(&mut connection)
        .await
        .expect("an old row");
    });
    let journal = Journal::open(&old).expect("the old journal, migrated");
    let old_identity = journal.identity();
    assert!(old_identity != identity && old_identity != reinstalled);
    assert_eq!(journal.counts().expect("counts").completed, 1, "its rows kept");
    drop(journal);
    assert_eq!(Journal::open(&old).expect("reopen").identity(), old_identity);
}

/// Grey records: flagged purchase intents are sealed beside completed rows; a
/// sealed batch is sent again unchanged even after the card settled one of its
/// intents; the settled debit then goes as a purchase in a later batch; once
/// clearing has acknowledged everything nothing is pending.
#[test]
fn flagged_intents_are_sealed_as_grey_records_and_settled_ones_follow_completed() {
    let directory = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(&directory.path().join("journal.sqlite")).expect("open");
    let identity = journal.identity();
    let name = |first: i64, last: i64| terminal::upload::batch_id(&identity, first, last);
    let done = journal.write_intent(entry(10, 0, 100)).expect("intent");
    done.complete(&journal, [1; 4], [1; 4], Resolution::Answer).expect("complete");
    let _grey = journal.write_intent(entry(11, 4, 150)).expect("intent");
    let _settled_later = journal.write_intent(entry(12, 7, 200)).expect("intent");
    // Flagged: only the old ones. The young intent below waits for its card.
    assert_eq!(journal.flag_unresolved_before(i64::MAX).expect("flag"), 2);
    let _young = journal.write_intent(entry(13, 0, 300)).expect("intent");

    let (batch, records) = journal.seal_batch(&TERMINAL, 10, name).expect("seal").expect("records wait");
    assert_eq!(batch, format!("{identity}-1-3"));
    let kinds: Vec<(i64, bool)> =
        records.iter().map(|record| (record.id(), matches!(record, UploadRecord::Unresolved { .. }))).collect();
    assert_eq!(kinds, [(1, false), (2, true), (3, true)], "the young intent is not sealed");
    assert_eq!(records[2].entry(), &entry(12, 7, 200), "the intent's fields, counter as INITIALIZE answered");

    // The card of row 3 comes back before clearing acknowledged: the batch is
    // sent again unchanged (row 3 still a grey record in it) ...
    let intent = journal.unresolved_for(&ApplicationSerial(12u64.to_be_bytes())).expect("card 12").remove(0);
    intent.complete(&journal, [3; 4], [3; 4], Resolution::Proof).expect("proved");
    assert_eq!(journal.sealed_batch().expect("sealed"), Some((batch.clone(), records.clone())));
    // ... and pending lists its grey record and its completed record.
    let pending = journal.pending_upload(100).expect("pending");
    assert_eq!(pending.len(), 4, "{pending:?}");
    assert_eq!(journal.mark_batch_uploaded(&batch).expect("acknowledged"), 3);

    // Then the completed debit of row 3 goes as a purchase in a batch of its own.
    let pending = journal.pending_upload(100).expect("pending");
    assert!(matches!(pending.as_slice(), [UploadRecord::Completed(completed)] if completed.id == 3), "{pending:?}");
    let (late, records) = journal.seal_batch(&TERMINAL, 10, name).expect("seal").expect("the settled debit");
    assert_eq!(late, format!("{identity}-3-3"));
    assert!(matches!(records.as_slice(), [UploadRecord::Completed(completed)] if completed.tac == [3; 4]));
    assert_eq!(journal.mark_batch_uploaded(&late).expect("acknowledged"), 1);
    assert!(journal.pending_upload(100).expect("pending").is_empty(), "everything acknowledged");
    assert_eq!(journal.seal_batch(&TERMINAL, 10, name).expect("seal"), None);
    assert_eq!(journal.counts().expect("counts").intents, 2, "grey records stay intents locally");

    // A grey record already taken whose intent the card then voids sends nothing more.
    let grey = journal.unresolved_for(&ApplicationSerial(11u64.to_be_bytes())).expect("card 11").remove(0);
    assert!(grey.is_flagged());
    grey.void(&journal, Resolution::NoProof).expect("no proof");
    assert!(journal.pending_upload(100).expect("pending").is_empty());
    assert_eq!(journal.seal_batch(&TERMINAL, 10, name).expect("seal"), None);
}

/// A sealed batch clearing refused with 409 is re-sealed under a new id: the
/// same records (a completed row and a grey record) move to it, none dropped
/// or added, and it is what is sent and acknowledged from then on; an id
/// already in the journal is refused, an unknown batch is nothing to re-seal.
#[test]
fn a_conflicting_batch_is_resealed_with_the_same_records() {
    let directory = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(&directory.path().join("journal.sqlite")).expect("open");
    let identity = journal.identity();
    let name = |first: i64, last: i64| terminal::upload::batch_id(&identity, first, last);
    let done = journal.write_intent(entry(20, 0, 100)).expect("intent");
    done.complete(&journal, [1; 4], [1; 4], Resolution::Answer).expect("complete");
    let _grey = journal.write_intent(entry(21, 4, 150)).expect("intent");
    assert_eq!(journal.flag_unresolved_before(i64::MAX).expect("flag"), 1);
    let (batch, records) = journal.seal_batch(&TERMINAL, 10, name).expect("seal").expect("records wait");
    let pending = journal.pending_upload(100).expect("pending");

    let taken = journal.reseal_batch(&batch, |_, _, _| batch.clone());
    assert!(matches!(&taken, Err(JournalError::BatchIdTaken(id)) if *id == batch), "{taken:?}");
    let mut drawn = Vec::new();
    let (resealed, moved) = journal
        .reseal_batch(&batch, |first, last, fresh| {
            drawn.push(fresh);
            terminal::upload::resealed_batch_id(&identity, first, last, fresh)
        })
        .expect("re-seal")
        .expect("the batch is sealed");
    assert_eq!(moved, 2);
    assert!(resealed.starts_with(&format!("{batch}.")), "{resealed}");
    assert_eq!(journal.sealed_batch().expect("sealed"), Some((resealed.clone(), records)), "the same records");
    assert_eq!(journal.pending_upload(100).expect("pending"), pending, "nothing pending added or dropped");
    assert_eq!(journal.reseal_batch(&batch, |_, _, _| "unused".into()).expect("nothing under the old id"), None);
    // A second re-seal draws another random suffix.
    let (again, _) = journal
        .reseal_batch(&resealed, |first, last, fresh| {
            drawn.push(fresh);
            terminal::upload::resealed_batch_id(&identity, first, last, fresh)
        })
        .expect("re-seal")
        .expect("sealed");
    assert!(drawn[0] != drawn[1] && again != resealed, "{drawn:?}");
    assert_eq!(journal.mark_batch_uploaded(&again).expect("acknowledged"), 2);
    assert!(journal.pending_upload(100).expect("pending").is_empty());
    assert_eq!(journal.sealed_batch().expect("sealed"), None);
}

/// Pruning deletes what clearing holds (acknowledged debits, voided attempts,
/// confirmed and voided loads) and keeps intents, anything not yet
/// acknowledged, and the newest row of each table, so that no row id (and no
/// batch id made of row ids) is ever given out again.
#[test]
fn pruning_keeps_whatever_clearing_has_not_acknowledged_and_never_reuses_an_id() {
    use terminal::journal::{LoadEntry, Pruned};
    let directory = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(&directory.path().join("journal.sqlite")).expect("open");
    let identity = journal.identity();
    let name = |first: i64, last: i64| terminal::upload::batch_id(&identity, first, last);
    let complete = |serial: u64, counter: u16| {
        let intent = journal.write_intent(entry(serial, counter, 100)).expect("intent");
        intent.complete(&journal, [1; 4], [2; 4], Resolution::Answer).expect("complete").id
    };
    // Rows 1-2: acknowledged by clearing. Row 3: voided. Row 4: a flagged
    // intent whose grey record is sealed, not acknowledged.
    complete(20, 0);
    complete(21, 0);
    let (batch, _) = journal.seal_batch(&TERMINAL, 10, name).expect("seal").expect("rows wait");
    assert_eq!(journal.mark_batch_uploaded(&batch).expect("acknowledged"), 2);
    journal.write_intent(entry(22, 0, 100)).expect("intent").void(&journal, Resolution::NoProof).expect("void");
    let _grey = journal.write_intent(entry(23, 0, 100)).expect("intent");
    assert_eq!(journal.flag_unresolved_before(i64::MAX).expect("flag"), 1);
    let (grey_batch, _) = journal.seal_batch(&TERMINAL, 10, name).expect("seal").expect("the grey record");
    // Row 5: completed, sealed, not acknowledged. Row 6: completed, not sealed.
    // Row 7: an intent. Row 8: acknowledged, but the newest row.
    complete(24, 0);
    let (sealed, _) = journal.seal_batch(&TERMINAL, 10, name).expect("seal").expect("row 5");
    complete(25, 0);
    let _intent = journal.write_intent(entry(26, 0, 100)).expect("intent");
    let newest = complete(27, 0);
    let (last, records) = journal.seal_batch(&TERMINAL, 1, name).expect("seal").expect("row 6");
    assert_eq!(records[0].id(), 6);
    assert_eq!(journal.mark_batch_uploaded(&last).expect("row 6 acknowledged"), 1);
    let (last, _) = journal.seal_batch(&TERMINAL, 10, name).expect("seal").expect("row 8");
    assert_eq!(journal.mark_batch_uploaded(&last).expect("row 8 acknowledged"), 1);
    assert_eq!(newest, 8);
    // Loads: confirmed, voided, completed but not confirmed, an intent, and the newest (confirmed).
    let load = |serial: u64| LoadEntry {
        card: ApplicationSerial(serial.to_be_bytes()),
        card_type: 1,
        online_counter: 0,
        amount: Fen(500),
        balance_before: Fen(0),
        terminal: TERMINAL,
        at: at(8, 0, 0),
    };
    let confirmed = journal.write_load_intent(load(30)).expect("load").complete(&journal, [3; 4]).expect("done");
    journal.mark_load_confirmed(confirmed.id).expect("confirmed");
    journal.write_load_intent(load(31)).expect("load").void(&journal).expect("voided");
    journal.write_load_intent(load(32)).expect("load").complete(&journal, [3; 4]).expect("unconfirmed");
    let _load_intent = journal.write_load_intent(load(33)).expect("load");
    let newest_load = journal.write_load_intent(load(34)).expect("load").complete(&journal, [3; 4]).expect("done");
    journal.mark_load_confirmed(newest_load.id).expect("confirmed");

    assert_eq!(journal.prune(0).expect("nothing old"), Pruned::default(), "rows younger than the cut stay");
    // Every row older than the cut: rows 1, 2 (acknowledged), 6 (acknowledged)
    // and 3 (voided) go; loads 1 (confirmed) and 2 (voided) go.
    assert_eq!(journal.prune(i64::MAX).expect("prune"), Pruned { transactions: 4, loads: 2 });
    assert_eq!(journal.prune(i64::MAX).expect("again"), Pruned::default(), "pruning twice deletes nothing more");
    assert_eq!(journal.counts().expect("counts"), Counts { intents: 2, completed: 2, voided: 0, completed_fen: 200 });
    // What waits for clearing is all still there: the sealed grey record and row 5, sent again unchanged.
    assert_eq!(journal.sealed_batch().expect("sealed").map(|(id, _)| id), Some(grey_batch.clone()));
    assert_eq!(journal.mark_batch_uploaded(&grey_batch).expect("acknowledged"), 1);
    assert_eq!(journal.sealed_batch().expect("sealed").map(|(id, records)| (id, records[0].id())), Some((sealed, 5)));
    assert_eq!(journal.unconfirmed_loads().expect("loads").len(), 1, "the unconfirmed load stays");
    assert_eq!(journal.unresolved_loads_for(&ApplicationSerial(33u64.to_be_bytes())).expect("load intent").len(), 1);
    // The next row takes a new id, after the newest: never one used before.
    let next = complete(28, 0);
    assert_eq!(next, newest + 1);
}

/// `terminal prune --config FILE --keep-days N`: rows written more than N
/// days ago that clearing acknowledged go, younger ones stay; 0 days is refused.
#[test]
fn the_prune_command_deletes_acknowledged_rows_older_than_its_days() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("journal.sqlite");
    let journal = Journal::open(&path).expect("open");
    let identity = journal.identity();
    for serial in 40..43 {
        let intent = journal.write_intent(entry(serial, 0, 100)).expect("intent");
        intent.complete(&journal, [1; 4], [2; 4], Resolution::Answer).expect("complete");
    }
    let name = |first: i64, last: i64| terminal::upload::batch_id(&identity, first, last);
    let (batch, _) = journal.seal_batch(&TERMINAL, 10, name).expect("seal").expect("rows wait");
    assert_eq!(journal.mark_batch_uploaded(&batch).expect("acknowledged"), 3);
    journal.close();
    // Row 1 written 40 days ago, row 2 ten days ago, row 3 (the newest) now.
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        use sqlx::ConnectOptions;
        let mut connection =
            sqlx::sqlite::SqliteConnectOptions::new().filename(&path).connect().await.expect("journal file");
        for (id, days) in [(1, 40), (2, 10)] {
            sqlx::query("UPDATE card_transaction SET written_unix_ms = ? WHERE id = ?")
                .bind(now_ms - days * 86_400_000)
                .bind(id)
                .execute(&mut connection)
                .await
                .expect("age a row");
        }
    });
    let config = directory.path().join("terminal.toml");
    std::fs::write(
        &config,
        format!("[journal]\npath = {path:?}\n[reader]\nkind = \"pcsc\"\ncard = \"unused\"\npsam = \"unused\"\n"),
    )
    .expect("config");
    let prune = |days: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_terminal"))
            .args(["prune", "--config"])
            .arg(&config)
            .args(["--keep-days", days])
            .env("RUST_LOG", "warn")
            .output()
            .expect("terminal prune")
    };
    let refused = prune("0");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("keep-days"), "names the option");
    let output = prune("30");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "pruned 1 transactions and 0 loads written more than 30 days ago"
    );
    let output = prune("5");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("pruned 1 transactions"), "row 2; row 3 is the newest");
    let journal = Journal::open(&path).expect("open");
    assert_eq!(journal.counts().expect("counts").completed, 1);
    assert!(journal.completed_for(&ApplicationSerial(42u64.to_be_bytes())).expect("row 3").len() == 1);
}

/// A prune of more rows than one commit takes goes on commit after commit
/// until nothing old is left.
#[test]
fn pruning_many_rows_takes_several_commits_and_leaves_the_newest() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("journal.sqlite");
    Journal::open(&path).expect("create").close();
    let rows = 2 * terminal::journal::PRUNE_ROWS_PER_COMMIT + 5;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        use sqlx::{ConnectOptions, Connection};
        let mut connection =
            sqlx::sqlite::SqliteConnectOptions::new().filename(&path).connect().await.expect("journal file");
        let mut transaction = connection.begin().await.expect("begin");
        for id in 1..=rows {
            sqlx::query(
                "INSERT INTO card_transaction (id, card_serial, offline_counter, kind, amount_fen, \
                 balance_before_fen, terminal_number, terminal_serial, card_date_time, at_unix_seconds, state, tac, \
                 mac2, resolution, written_unix_ms, upload_batch, uploaded_unix_ms) VALUES (?, '0000000000000009', ?, \
                 6, 100, 100000, '310000000042', ?, '20261125080000', 0, 'completed', x'01010101', x'02020202', \
                 'answer', 0, 'old', 1)",
            )
            .bind(id)
            .bind(id)
            .bind(id)
            .execute(&mut *transaction)
            .await
            .expect("an old acknowledged row");
        }
        transaction.commit().await.expect("commit");
    });
    let journal = Journal::open(&path).expect("open");
    let pruned = journal.prune(i64::MAX).expect("prune");
    assert_eq!(pruned.transactions, rows as u64 - 1, "all but the newest");
    assert_eq!(journal.counts().expect("counts").completed, 1);
    let next = journal.write_intent(entry(50, 0, 100)).expect("intent");
    assert_eq!(next.id(), rows + 1, "ids go on after the newest");
}
