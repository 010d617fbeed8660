//! Card personalisation: keys derived in the HSM and opened only by the station
//! holding the transport key, the image written through card-host and recorded
//! in clearing; on SQLite and PostgreSQL.

mod support;

use card_host::card::{CardType, CitizenCard};
use card_host::crypto::Key16;
use card_host::issue::{self, IssueOptions, ProfileFile, TransportKey};
use card_host::model::{ApplicationSerial, Fen};
use clearing::Error;
use clearing::personalise::Personaliser;
use clearing::registry;
use hsm_sim::keystore::TEST_TRANSPORT_KEY;
use support::{Backend, World, at, citizen_key};

fn transport_key() -> TransportKey {
    TransportKey::load(&issue::fixtures::test_transport_key()).expect("TEST transport key")
}

fn options(serial: &str, balance: u32) -> IssueOptions {
    IssueOptions {
        serial: Some(ApplicationSerial::parse_hex(serial).expect("serial")),
        initial_balance: Fen(balance),
        issued_at: at(2, 10, 0),
        ..IssueOptions::default()
    }
}

both!(a_card_is_personalised_with_its_own_keys_and_recorded, |backend: Backend| async move {
    let world = World::new(backend).await;
    let directory = tempfile::tempdir().expect("temporary directory");
    let station =
        Personaliser::new(&directory.path().join("cards"), TEST_TRANSPORT_KEY, &transport_key()).expect("station");
    let profiles = ProfileFile::load(&issue::fixtures::cardholders()).expect("profiles");
    let holder = profiles.cardholder(1).expect("profile");
    let mut chosen = options("3100000055550001", 2_500);
    chosen.card_type = Some(CardType::Senior);

    let issued =
        station.issue(world.db(), &world.client, &citizen_key(), "card", holder, &chosen).await.expect("personalised");
    assert_eq!(issued.image, station.image_path(&issued.serial));

    // The image holds exactly the card's diversified keys, the holder and the balance.
    let card = CitizenCard::open(&issued.image).expect("image opens");
    let image = card.image();
    assert_eq!(image.serial, issued.serial);
    assert_eq!(image.card_type, CardType::Senior);
    assert_eq!(image.purse.balance, Fen(2_500));
    let expected = support::master_keys().card_keys(&issued.serial);
    assert_eq!(
        serde_json::to_value(&image.keys).expect("json"),
        serde_json::to_value(&expected).expect("json"),
        "the keys opened from the HSM's answer are the card's own"
    );

    // Clearing knows the card with the same opening balance.
    let shadow = registry::shadow(world.db(), &issued.serial).await.expect("shadow");
    assert_eq!((shadow.status.as_str(), shadow.key_set.as_str(), shadow.balance_fen), ("active", "card", 2_500));
    assert_eq!(clearing::ledger::total(world.db()).await.expect("ledger"), 0);

    // The same serial again: a conflict, and the first image is untouched.
    let before = std::fs::read(&issued.image).expect("image");
    let again = station.issue(world.db(), &world.client, &citizen_key(), "card", holder, &chosen).await;
    assert!(matches!(again, Err(Error::Conflict(_))), "{again:?}");
    assert_eq!(std::fs::read(&issued.image).expect("image"), before);
});

both!(a_station_with_another_transport_key_writes_and_records_nothing, |backend: Backend| async move {
    let world = World::new(backend).await;
    let directory = tempfile::tempdir().expect("temporary directory");
    let mut wrong = transport_key();
    wrong.key = Key16::from_bytes(*b"not the real ZMK");
    let station = Personaliser::new(directory.path(), TEST_TRANSPORT_KEY, &wrong).expect("station");
    let profiles = ProfileFile::load(&issue::fixtures::cardholders()).expect("profiles");
    let chosen = options("3100000055550002", 0);

    let result = station
        .issue(world.db(), &world.client, &citizen_key(), "card", profiles.cardholder(0).expect("profile"), &chosen)
        .await;
    assert!(matches!(result, Err(Error::Config(_))), "{result:?}");
    assert!(!station.image_path(&chosen.serial.expect("serial")).exists());
    let unknown = registry::shadow(world.db(), &chosen.serial.expect("serial")).await;
    assert!(matches!(unknown, Err(Error::NotFound(_))), "nothing recorded: {unknown:?}");

    // A key set the HSM does not hold: refused naming the field, nothing written.
    let right = Personaliser::new(directory.path(), TEST_TRANSPORT_KEY, &transport_key()).expect("station");
    let result = right
        .issue(
            world.db(),
            &world.client,
            &citizen_key(),
            "nosuchset",
            profiles.cardholder(0).expect("profile"),
            &chosen,
        )
        .await;
    assert!(matches!(&result, Err(Error::Invalid { field, .. }) if field == "key_set"), "{result:?}");
    assert!(!right.image_path(&chosen.serial.expect("serial")).exists());
});
