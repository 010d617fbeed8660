//! The city's people and their cards: fictional cardholders generated from the
//! seed (valid GB 11643 citizen IDs; names, numbers and PINs made up), card
//! types mixed, each issued through clearing's issuer API
//! (`POST /v1/issuer/cards` with its personalisation): clearing derives the
//! card's keys in the HSM (under the TEST transport key), writes the image
//! through card-host's issuance into the card directory, and opens the card's
//! shadow account with its opening balance.

use std::path::{Path, PathBuf};

use card_host::card::{CardType, CitizenCard};
use card_host::issue::{self, Cardholder, ProfileFile, Sex};
use card_host::{ApplicationSerial, Fen};
use rand::Rng;
use rand::rngs::StdRng;

use super::CityError;

/// The HSM key set the cards are issued under (the TEST key set of a fresh HSM).
pub const KEY_SET: &str = hsm_sim::keystore::TEST_SET_TRIPLE_DES;

const SURNAMES: [&str; 20] = [
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭", "何", "林", "罗",
    "高",
];
const GIVEN: [&str; 30] = [
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "秀英", "霞",
    "平", "刚", "桂英", "建华", "文", "晨", "宇", "欣怡", "子涵", "浩然", "梓萱",
];
const DISTRICTS: [&str; 6] = ["310101", "310104", "310105", "310106", "310110", "310115"];

/// One cardholder of the run and their card.
pub struct Person {
    pub holder: Cardholder,
    pub serial: ApplicationSerial,
    pub card_type: CardType,
    pub image: PathBuf,
    pub opening: Fen,
}

impl Person {
    pub fn pin(&self) -> &str {
        &self.holder.pin
    }

    /// The card, taken out of the wallet (its image on disk).
    pub fn card(&self) -> Result<CitizenCard, CityError> {
        CitizenCard::open(&self.image).map_err(|error| CityError::step("open a card image", error))
    }

    /// The balance on the card now.
    pub fn balance(&self) -> Result<Fen, CityError> {
        Ok(self.card()?.image().purse.balance)
    }
}

/// The GB 11643 check character of 17 digits.
fn check_character(digits: &str) -> char {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let sum: u32 = digits.bytes().zip(WEIGHTS).map(|(digit, weight)| u32::from(digit - b'0') * weight).sum();
    char::from(CHECK[(sum % 11) as usize])
}

fn card_type(rng: &mut StdRng) -> CardType {
    match rng.random_range(0..100) {
        0..60 => CardType::Ordinary,
        60..75 => CardType::Student,
        75..90 => CardType::Senior,
        _ => CardType::Disabled,
    }
}

/// Person number `n` (from 0), drawn from `rng`, with `template`'s medical
/// profile shape.
fn cardholder(n: usize, rng: &mut StdRng, template: &Cardholder) -> (Cardholder, CardType) {
    let card_type = card_type(rng);
    let year = match card_type {
        CardType::Student => rng.random_range(2006..=2012),
        CardType::Senior => rng.random_range(1940..=1960),
        _ => rng.random_range(1962..=2004),
    };
    let (month, day) = (rng.random_range(1..=12u32), rng.random_range(1..=28u32));
    let sex = if rng.random_bool(0.5) { Sex::Male } else { Sex::Female };
    let district = DISTRICTS[rng.random_range(0..DISTRICTS.len())];
    // Sequence digits: unique per person number; the last is odd for men.
    let sequence = (n % 500) * 2 + usize::from(sex == Sex::Male);
    let first17 = format!("{district}{year:04}{month:02}{day:02}{sequence:03}");
    let citizen_id = format!("{first17}{}", check_character(&first17));
    let name = format!("{}{}", SURNAMES[rng.random_range(0..SURNAMES.len())], GIVEN[rng.random_range(0..GIVEN.len())]);
    let mut medical = template.medical.clone();
    medical.patient_number = format!("P31{:09}", n + 1);
    let holder = Cardholder {
        name,
        sex,
        nation: 1,
        birthplace: district.to_owned(),
        birth_date: format!("{year:04}-{month:02}-{day:02}"),
        citizen_id: citizen_id.clone(),
        social_security_number: citizen_id,
        social_security_card_number: format!("C{:08}", n + 1),
        region: "310000".to_owned(),
        card_type,
        application_serial: format!("31010000{:08}", n + 1),
        pin: format!("{:06}", rng.random_range(0..1_000_000)),
        medical,
    };
    (holder, card_type)
}

/// The issuer's side: clearing's issuer API with its personalisation station.
pub struct Issuer<'a> {
    pub api: &'a super::Api,
    /// Where the station writes the images.
    pub images: &'a Path,
}

impl Issuer<'_> {
    /// Issues person `n` through `POST /v1/issuer/cards` with their
    /// personalisation: clearing derives the card's keys in the HSM, writes the
    /// image through card-host's issuance and records the card with `opening`.
    pub fn issue(&self, n: usize, rng: &mut StdRng, opening: Fen) -> Result<Person, CityError> {
        let profiles = ProfileFile::load(&issue::fixtures::cardholders())
            .map_err(|error| CityError::step("read the fixture cardholders", error))?;
        let template = &profiles.cardholders[n % profiles.cardholders.len()];
        let (holder, card_type) = cardholder(n, rng, template);
        let serial = holder.serial().map_err(|error| CityError::step("a generated serial", error))?;
        let field = |error: serde_json::Error| CityError::step("a personalisation field", error);
        let sex = serde_json::to_value(holder.sex).map_err(field)?;
        let medical = serde_json::to_value(&holder.medical).map_err(field)?;
        let body = serde_json::json!({
            "card_serial": serial.to_hex(),
            "card_type": card_type.code(),
            "key_set": KEY_SET,
            "citizen_id": holder.citizen_id,
            "name": holder.name,
            "initial_balance_fen": opening.0,
            "personalisation": {
                "sex": sex,
                "nation": holder.nation,
                "birthplace": holder.birthplace,
                "birth_date": holder.birth_date,
                "social_security_number": holder.social_security_number,
                "social_security_card_number": holder.social_security_card_number,
                "region": holder.region,
                "pin": holder.pin,
                "medical": medical,
            },
        });
        self.api.post_issuer("/v1/issuer/cards", &body)?;
        let image = self.images.join(format!("{}.{}", serial.to_hex(), clearing::personalise::IMAGE_EXTENSION));
        if !image.exists() {
            return Err(CityError::step("issue a card", format!("no image at {}", image.display())));
        }
        Ok(Person { holder, serial, card_type, image, opening })
    }
}

/// A card type as the summary names it.
pub fn type_name(card_type: CardType) -> &'static str {
    match card_type {
        CardType::Student => "student",
        CardType::Senior => "senior",
        CardType::Disabled => "disabled",
        CardType::Staff => "staff",
        _ => "adult",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn generated_people_have_valid_unique_ids() {
        let profiles = ProfileFile::load(&issue::fixtures::cardholders()).expect("fixtures");
        let mut rng = StdRng::seed_from_u64(7);
        let mut ids = std::collections::HashSet::new();
        for n in 0..400 {
            let (holder, _) = cardholder(n, &mut rng, &profiles.cardholders[0]);
            assert!(issue::citizen_id_is_valid(&holder.citizen_id), "{n}");
            assert!(ids.insert(holder.citizen_id.clone()), "{n} repeats an ID");
            assert!(holder.serial().is_ok());
        }
    }
}
