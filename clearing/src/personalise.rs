//! Card personalisation for the issuer. A new card's keys are diversified in the
//! HSM from the issuer's master key set and come back wrapped under a transport
//! key (`ZA`); the personalisation station — this module, which holds the
//! transport key as a card printer's secure module would — opens them only to
//! build the new card image with card-host's issuance code and save it
//! atomically (temp file, fsync, rename) into the station's output directory.
//! Clearing never sees the master keys, and the card keys live only in the card.
//!
//! Order: the card is first recorded in clearing (`registry::issue_card`: the
//! cardholder, the shadow account, the funded opening balance; a serial issued
//! before is a conflict and nothing is written), then its image is written,
//! refusing to overwrite an existing file. A failure after the record leaves an
//! issued card with no image: the issuer replaces it (`/replace`) with a new
//! serial, as for a card spoiled at the printer.

use std::path::{Path, PathBuf};

use card_host::card::{CardImage, CardKeys, CardType};
use card_host::crypto::Key16;
use card_host::issue::{self, Cardholder, IssueOptions, TransportKey};
use card_host::model::{ApplicationSerial, Fen};
use hsm_sim::{HsmClient, KeyAlgorithm};

use crate::db::Db;
use crate::error::Error;
use crate::registry::{self, CitizenIdKey, NewCard, Replacement, ReplacementCard};

/// The card image files a personalisation station writes, by serial.
pub const IMAGE_EXTENSION: &str = "card";

/// A card personalisation station: the transport key it shares with the HSM
/// and the directory its card images go to.
pub struct Personaliser {
    directory: PathBuf,
    transport_label: String,
    transport_algorithm: KeyAlgorithm,
    transport_key: Key16,
}

impl std::fmt::Debug for Personaliser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Personaliser")
            .field("directory", &self.directory)
            .field("transport_label", &self.transport_label)
            .finish_non_exhaustive()
    }
}

/// A card issued and personalised.
#[derive(Debug, Clone)]
pub struct Personalised {
    pub serial: ApplicationSerial,
    pub card_type: CardType,
    /// The new card image.
    pub image: PathBuf,
}

impl Personaliser {
    /// A station writing into `directory` (created when missing), opening keys
    /// the HSM wrapped under its key `transport_label`, which holds `transport`.
    pub fn new(directory: &Path, transport_label: &str, transport: &TransportKey) -> Result<Personaliser, Error> {
        std::fs::create_dir_all(directory)
            .map_err(|source| Error::File { path: directory.display().to_string(), source })?;
        if transport.test_only {
            tracing::warn!(label = transport_label, "personalising cards with the TEST-ONLY transport key");
        }
        Ok(Personaliser {
            directory: directory.to_owned(),
            transport_label: transport_label.to_owned(),
            transport_algorithm: KeyAlgorithm::from_card(transport.algorithm),
            transport_key: transport.key.clone(),
        })
    }

    /// Where the image of the card with this serial goes.
    pub fn image_path(&self, serial: &ApplicationSerial) -> PathBuf {
        self.directory.join(format!("{}.{IMAGE_EXTENSION}", serial.to_hex()))
    }

    /// Issues a card to `holder`: recorded in clearing, keys from the HSM's
    /// master key set `key_set`, image written. `options` may override the
    /// profile's serial and card type and sets the opening balance.
    pub async fn issue(
        &self,
        db: &Db,
        hsm: &HsmClient,
        citizen_key: &CitizenIdKey,
        key_set: &str,
        holder: &Cardholder,
        options: &IssueOptions,
    ) -> Result<Personalised, Error> {
        let serial = match options.serial {
            Some(serial) => serial,
            None => holder.serial().map_err(|error| Error::invalid("application_serial", error.to_string()))?,
        };
        let card_type = options.card_type.unwrap_or(holder.card_type);
        let options = IssueOptions { serial: Some(serial), card_type: Some(card_type), ..options.clone() };
        // Check everything that can be checked before anything is recorded.
        let keys = self.card_keys(hsm, key_set, serial).await?;
        let image = build(holder, keys.clone(), &options)?;
        self.check_free(&serial)?;
        let card = NewCard {
            serial,
            card_type: card_type.code(),
            key_set: key_set.to_owned(),
            citizen_id: holder.citizen_id.clone(),
            name: holder.name.clone(),
            initial_balance: options.initial_balance,
            issued_at: options.issued_at,
        };
        registry::issue_card(db, citizen_key, &card).await?;
        self.write(&serial, &image)?;
        tracing::info!(card = %serial.masked(), ?card_type, "card personalised");
        Ok(Personalised { serial, card_type, image: self.image_path(&serial) })
    }

    /// Replaces card `old` (lost or damaged) with a new card personalised for
    /// the same cardholder (`holder.citizen_id` must be theirs; the name is the
    /// one clearing holds): the old card's shadow balance moves to the new card,
    /// whose image is written holding exactly that balance.
    pub async fn replace(
        &self,
        db: &Db,
        hsm: &HsmClient,
        citizen_key: &CitizenIdKey,
        old: &ApplicationSerial,
        new: &ReplacementCard,
        holder: &Cardholder,
    ) -> Result<(Replacement, Personalised), Error> {
        let card_type = CardType::from_code(new.card_type)
            .ok_or_else(|| Error::invalid("card_type", "not a card type code (1 to 5)"))?;
        let name = registry::cardholder_name(db, citizen_key, old, &holder.citizen_id).await?;
        let holder = Cardholder { name, ..holder.clone() };
        let keys = self.card_keys(hsm, &new.key_set, new.serial).await?;
        let mut options = IssueOptions {
            serial: Some(new.serial),
            card_type: Some(card_type),
            issued_at: new.issued_at,
            ..IssueOptions::default()
        };
        // The profile is checked before the replacement is recorded.
        build(&holder, keys.clone(), &options)?;
        self.check_free(&new.serial)?;
        let replacement = registry::replace_card(db, old, new).await?;
        options.initial_balance = u32::try_from(replacement.balance_moved_fen)
            .map(Fen)
            .map_err(|_| Error::Inconsistent(format!("card {} has a negative balance", old.masked())))?;
        let image = build(&holder, keys, &options)?;
        self.write(&new.serial, &image)?;
        tracing::info!(old = %old.masked(), new = %new.serial.masked(), "replacement card personalised");
        Ok((replacement, Personalised { serial: new.serial, card_type, image: self.image_path(&new.serial) }))
    }

    /// The card's keys: derived in the HSM under the transport key, opened here.
    async fn card_keys(&self, hsm: &HsmClient, key_set: &str, serial: ApplicationSerial) -> Result<CardKeys, Error> {
        let wrapped =
            hsm.derive_card_keys(key_set, serial, &self.transport_label).await.map_err(|error| match error.code() {
                Some(hsm_sim::ErrorCode::KeyNotFound) => Error::invalid("key_set", "the HSM holds no such key set"),
                _ => Error::Hsm(error),
            })?;
        wrapped.unwrap(&self.transport_key, self.transport_algorithm).map_err(|code| {
            Error::Config(format!(
                "the card keys do not open under transport key {} ({code}): the station and the HSM hold different keys",
                self.transport_label
            ))
        })
    }

    fn check_free(&self, serial: &ApplicationSerial) -> Result<(), Error> {
        if self.image_path(serial).exists() {
            return Err(Error::Conflict(format!("a card image for {} exists already", serial.masked())));
        }
        Ok(())
    }

    fn write(&self, serial: &ApplicationSerial, image: &CardImage) -> Result<(), Error> {
        let path = self.image_path(serial);
        card_host::storage::create(&path, image, false)
            .map_err(|error| Error::File { path: path.display().to_string(), source: std::io::Error::other(error) })
    }
}

/// The card image of `holder` with `keys`; a profile field that does not fit is
/// refused by name.
fn build(holder: &Cardholder, keys: CardKeys, options: &IssueOptions) -> Result<CardImage, Error> {
    issue::build_image(holder, keys, options).map_err(|error| match error {
        issue::IssueError::Field { field, reason } => Error::invalid(field, reason),
        other => Error::invalid("cardholder", other.to_string()),
    })
}
