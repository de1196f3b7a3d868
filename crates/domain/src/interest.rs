//! Interest on an account's daily balances, by algorithm version (for corrections by replay).
//!
//! Both versions pay `annual_rate` on each UTC day's **end-of-day balance** (every movement
//! with an event time before the next midnight counts, late data included; a negative balance
//! earns nothing) over the days `from <= day < to`. They differ in the day count and rounding:
//! - **v1** (what eventfold booked before): a 360-day year, each day's interest rounded to the
//!   currency's minor unit (half away from zero) and summed;
//! - **v2** (the correction): actual/365, the days' interest summed unrounded and rounded once
//!   (half to even, "banker's rounding").
//!
//! The seed (`seeds/001`, "RecalculateAndCompensate"): replay the same events under both
//! versions and book the difference as one `CorrectionApplied`.
//!
//! Money is `rust_decimal`; no floating point anywhere.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// An interest algorithm version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterestAlgorithm {
    /// 360-day year, rounded daily.
    V1,
    /// Actual/365, rounded once.
    V2,
}

impl InterestAlgorithm {
    /// `v1` or `v2`.
    pub fn name(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }

    /// Parses `v1` or `v2`.
    ///
    /// # Errors
    /// A message naming the accepted versions.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "v1" => Ok(Self::V1),
            "v2" => Ok(Self::V2),
            other => Err(format!("interest algorithm {other:?} is not one of v1, v2")),
        }
    }
}

/// A change of balance at an event time: positive in, negative out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Movement {
    /// Event time (UTC).
    pub at: DateTime<Utc>,
    /// Signed amount in the account's currency.
    pub amount: Decimal,
}

/// Interest for `from <= day < to` (UTC days) on the balances `movements` produce, paid at
/// `annual_rate` (a fraction: 0.015 is 1.5 %), rounded to `minor_units` decimal places.
/// `movements` may be in any order. An empty or reversed range earns nothing.
pub fn interest(
    algorithm: InterestAlgorithm,
    movements: &[Movement],
    from: NaiveDate,
    to: NaiveDate,
    annual_rate: Decimal,
    minor_units: u32,
) -> Decimal {
    if to <= from {
        return Decimal::ZERO;
    }
    let mut sorted: Vec<Movement> = movements.to_vec();
    sorted.sort_by_key(|m| m.at);
    let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    // The balance is constant between movements: walk the stretches of equal end-of-day
    // balance instead of every day.
    let mut next = sorted.iter().peekable();
    let mut balance = Decimal::ZERO;
    // Movements before the first day's end count for it.
    let mut day = from;
    let (year, daily_round) = match algorithm {
        InterestAlgorithm::V1 => (Decimal::from(360), true),
        InterestAlgorithm::V2 => (Decimal::from(365), false),
    };
    let mut total = Decimal::ZERO;
    while day < to {
        let end = day.succ_opt().expect("a next day");
        while let Some(m) = next.next_if(|m| m.at < midnight(end)) {
            balance += m.amount;
        }
        // Days until the next movement changes the balance (or the range ends).
        let stretch_end = next
            .peek()
            .map(|m| m.at.date_naive().max(end))
            .map_or(to, |d| d.min(to));
        let days = Decimal::from((stretch_end - day).num_days().max(1));
        if balance > Decimal::ZERO {
            let per_day = balance * annual_rate / year;
            total += if daily_round {
                per_day.round_dp_with_strategy(minor_units, RoundingStrategy::MidpointAwayFromZero)
                    * days
            } else {
                per_day * days
            };
        }
        day = day + chrono::Days::new(days.try_into().unwrap_or(1));
    }
    total.round_dp_with_strategy(minor_units, RoundingStrategy::MidpointNearestEven)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    /// The same computation, one day at a time (the definition, without the stretch shortcut).
    fn by_day(
        algorithm: InterestAlgorithm,
        movements: &[Movement],
        from: &str,
        to: &str,
    ) -> Decimal {
        let (from, to) = (d(from), d(to));
        let (year, daily) = match algorithm {
            InterestAlgorithm::V1 => (dec("360"), true),
            InterestAlgorithm::V2 => (dec("365"), false),
        };
        let mut total = Decimal::ZERO;
        let mut day = from;
        while day < to {
            let end = day
                .succ_opt()
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc();
            let balance: Decimal = movements
                .iter()
                .filter(|m| m.at < end)
                .map(|m| m.amount)
                .sum();
            if balance > Decimal::ZERO {
                let x = balance * dec("0.05") / year;
                total += if daily {
                    x.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
                } else {
                    x
                };
            }
            day = day.succ_opt().unwrap();
        }
        total.round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven)
    }

    #[test]
    fn a_constant_balance_for_a_year_by_hand() {
        // 1,000.00 at 5 %: v1 pays round(1000 * 0.05 / 360 = 0.13888..) = 0.14 a day, 365 days
        // = 51.10; v2 pays 1000 * 0.05 * 365 / 365 = 50.00.
        let m = [Movement {
            at: at("2023-12-31T10:00:00Z"),
            amount: dec("1000.00"),
        }];
        let (from, to) = (d("2024-01-01"), d("2024-12-31"));
        assert_eq!(
            interest(InterestAlgorithm::V1, &m, from, to, dec("0.05"), 2),
            dec("51.10")
        );
        assert_eq!(
            interest(InterestAlgorithm::V2, &m, from, to, dec("0.05"), 2),
            dec("50.00")
        );
    }

    #[test]
    fn stretches_equal_the_day_by_day_definition_with_late_and_same_day_movements() {
        let m = [
            Movement {
                at: at("2024-01-03T12:00:00Z"),
                amount: dec("250.00"),
            },
            Movement {
                at: at("2024-01-03T23:59:59Z"),
                amount: dec("-50.00"),
            },
            Movement {
                at: at("2024-02-10T00:00:00Z"),
                amount: dec("1000.55"),
            },
            // Late data: arrives after the others in the list, happened before.
            Movement {
                at: at("2023-06-01T08:00:00Z"),
                amount: dec("10.00"),
            },
            Movement {
                at: at("2024-03-01T09:30:00Z"),
                amount: dec("-1210.55"),
            },
            Movement {
                at: at("2024-03-20T00:00:01Z"),
                amount: dec("3.33"),
            },
        ];
        for algorithm in [InterestAlgorithm::V1, InterestAlgorithm::V2] {
            for (from, to) in [
                ("2024-01-01", "2024-04-01"),
                ("2024-01-03", "2024-01-04"),
                ("2024-02-10", "2024-03-21"),
            ] {
                assert_eq!(
                    interest(algorithm, &m, d(from), d(to), dec("0.05"), 2),
                    by_day(algorithm, &m, from, to),
                    "{algorithm:?} {from}..{to}"
                );
            }
        }
        assert_eq!(
            interest(
                InterestAlgorithm::V2,
                &m,
                d("2024-02-01"),
                d("2024-01-01"),
                dec("0.05"),
                2
            ),
            Decimal::ZERO
        );
    }
}
