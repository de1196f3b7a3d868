//! Decimal money with an ISO 4217 currency. Never floating point.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// An ISO 4217 currency code that eventfold knows, with its number of minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct Currency([u8; 3]);

/// Reads the code from a borrowed string when the JSON has one (no allocation per event on
/// replay); an unknown code is the error [`MoneyError::UnknownCurrency`] names.
impl<'de> serde::Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Code;
        impl serde::de::Visitor<'_> for Code {
            type Value = Currency;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an ISO 4217 currency code")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Currency, E> {
                s.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Code)
    }
}

/// Currencies and their minor units (ISO 4217). A code outside this list is refused.
const KNOWN: &[(&str, u32)] = &[
    ("USD", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("TWD", 2),
    ("JPY", 0),
    ("CNY", 2),
    ("HKD", 2),
    ("SGD", 2),
    ("KRW", 0),
    ("AUD", 2),
    ("CAD", 2),
    ("CHF", 2),
];

/// The codes of every currency eventfold knows (see [`Currency`]), in a fixed order.
pub fn known_currencies() -> impl Iterator<Item = &'static str> {
    KNOWN.iter().map(|(c, _)| *c)
}

impl Currency {
    /// US dollars.
    pub const USD: Currency = Currency(*b"USD");
    /// New Taiwan dollars (the seeds' default currency).
    pub const TWD: Currency = Currency(*b"TWD");

    /// The three-letter code.
    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ascii code")
    }

    /// Decimal places allowed in amounts of this currency (2 for USD, 0 for JPY).
    pub fn minor_units(&self) -> u32 {
        KNOWN
            .iter()
            .find(|(c, _)| c.as_bytes() == self.0)
            .map_or(2, |(_, u)| *u)
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, MoneyError> {
        KNOWN
            .iter()
            .find(|(c, _)| *c == s)
            .map(|(c, _)| {
                let mut code = [0u8; 3];
                code.copy_from_slice(c.as_bytes());
                Currency(code)
            })
            .ok_or_else(|| MoneyError::UnknownCurrency(s.to_owned()))
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(s: String) -> Result<Self, MoneyError> {
        s.parse()
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.code().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Why an amount or currency was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MoneyError {
    /// Not an ISO 4217 code eventfold knows.
    #[error("unknown currency {0:?}")]
    UnknownCurrency(String),
    /// Not a decimal number.
    #[error("amount {0:?} is not a decimal number")]
    NotANumber(String),
    /// More decimal places than the currency has minor units.
    #[error("amount {amount} has more than {allowed} decimal places for {currency}")]
    TooManyDecimals {
        /// The amount given.
        amount: String,
        /// The currency.
        currency: Currency,
        /// Its minor units.
        allowed: u32,
    },
    /// Zero or negative where a positive amount is needed.
    #[error("amount {0} must be greater than zero")]
    NotPositive(Decimal),
    /// Negative where zero or more is needed.
    #[error("amount {0} must not be negative")]
    Negative(Decimal),
    /// Two currencies mixed in one operation.
    #[error("currency {got} does not match {expected}")]
    CurrencyMismatch {
        /// The currency required.
        expected: Currency,
        /// The currency given.
        got: Currency,
    },
    /// The amount exceeds 10^15 in major units.
    #[error("amount {0} is too large")]
    TooLarge(Decimal),
}

/// An amount of a currency, e.g. `12.30 USD`. The amount has at most the currency's minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// The amount as a decimal string, e.g. `"12.30"`.
    pub amount: Decimal,
    /// ISO 4217 code.
    pub currency: Currency,
}

impl Money {
    /// Checks the amount's scale against the currency, and normalises it to the currency's minor
    /// units (`12.3 USD` -> `12.30`).
    ///
    /// # Errors
    /// [`MoneyError::TooManyDecimals`] or [`MoneyError::TooLarge`].
    pub fn new(amount: Decimal, currency: Currency) -> Result<Self, MoneyError> {
        let allowed = currency.minor_units();
        let normalized = amount.normalize();
        if normalized.scale() > allowed {
            return Err(MoneyError::TooManyDecimals {
                amount: amount.to_string(),
                currency,
                allowed,
            });
        }
        if normalized.abs() >= Decimal::from(1_000_000_000_000_000i64) {
            return Err(MoneyError::TooLarge(amount));
        }
        let mut amount = normalized;
        amount.rescale(allowed);
        Ok(Self { amount, currency })
    }

    /// Parses an amount string (`"12.30"`) in a currency.
    ///
    /// # Errors
    /// [`MoneyError::NotANumber`] and the errors of [`Money::new`].
    pub fn parse(amount: &str, currency: Currency) -> Result<Self, MoneyError> {
        let value = Decimal::from_str_exact(amount.trim())
            .map_err(|_| MoneyError::NotANumber(amount.to_owned()))?;
        Self::new(value, currency)
    }

    /// Zero in `currency`.
    pub fn zero(currency: Currency) -> Self {
        let mut amount = Decimal::ZERO;
        amount.rescale(currency.minor_units());
        Self { amount, currency }
    }

    /// Refuses zero and negative amounts.
    ///
    /// # Errors
    /// [`MoneyError::NotPositive`].
    pub fn positive(self) -> Result<Self, MoneyError> {
        if self.amount > Decimal::ZERO {
            Ok(self)
        } else {
            Err(MoneyError::NotPositive(self.amount))
        }
    }

    /// Refuses negative amounts.
    ///
    /// # Errors
    /// [`MoneyError::Negative`].
    pub fn non_negative(self) -> Result<Self, MoneyError> {
        if self.amount >= Decimal::ZERO {
            Ok(self)
        } else {
            Err(MoneyError::Negative(self.amount))
        }
    }

    /// Refuses another currency.
    ///
    /// # Errors
    /// [`MoneyError::CurrencyMismatch`].
    pub fn in_currency(self, expected: Currency) -> Result<Self, MoneyError> {
        if self.currency == expected {
            Ok(self)
        } else {
            Err(MoneyError::CurrencyMismatch {
                expected,
                got: self.currency,
            })
        }
    }

    /// `self + other`, same currency (checked by the caller).
    pub fn plus(self, other: Money) -> Money {
        Money {
            amount: self.amount + other.amount,
            currency: self.currency,
        }
    }

    /// `self - other`, same currency (checked by the caller).
    pub fn minus(self, other: Money) -> Money {
        Money {
            amount: self.amount - other.amount,
            currency: self.currency,
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_normalises_scale_and_refuses_bad_amounts() {
        assert_eq!(
            Money::parse("12.3", Currency::USD)
                .unwrap()
                .amount
                .to_string(),
            "12.30"
        );
        assert_eq!(
            Money::parse("0", Currency::USD).unwrap().amount.to_string(),
            "0.00"
        );
        assert_eq!(
            Money::parse("12.300", Currency::USD)
                .unwrap()
                .amount
                .to_string(),
            "12.30"
        );
        assert!(matches!(
            Money::parse("1.001", Currency::USD),
            Err(MoneyError::TooManyDecimals { .. })
        ));
        assert!(matches!(
            Money::parse("1.5", "JPY".parse().unwrap()),
            Err(MoneyError::TooManyDecimals { .. })
        ));
        assert!(matches!(
            Money::parse("abc", Currency::USD),
            Err(MoneyError::NotANumber(_))
        ));
        assert!(matches!(
            Money::parse("1e3", Currency::USD),
            Err(MoneyError::NotANumber(_))
        ));
        assert!(matches!(
            Money::parse("-1", Currency::USD).unwrap().positive(),
            Err(MoneyError::NotPositive(_))
        ));
        assert!(matches!(
            Money::parse("0", Currency::USD).unwrap().positive(),
            Err(MoneyError::NotPositive(_))
        ));
        assert!(matches!(
            "usd".parse::<Currency>(),
            Err(MoneyError::UnknownCurrency(_))
        ));
        assert!(matches!(
            Money::parse("1000000000000000", Currency::USD),
            Err(MoneyError::TooLarge(_))
        ));
    }

    #[test]
    fn money_serializes_amount_as_a_string() {
        let m = Money::parse("1234.5", Currency::USD).unwrap();
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"amount":"1234.50","currency":"USD"}"#
        );
        let back: Money = serde_json::from_str(r#"{"amount":"1234.50","currency":"USD"}"#).unwrap();
        assert_eq!(back, m);
        assert!(serde_json::from_str::<Money>(r#"{"amount":"1","currency":"XXX"}"#).is_err());
    }
}
