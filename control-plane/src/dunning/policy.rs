//! The dunning policy: when failed invoices are retried, how the levels escalate, which
//! declines are not worth retrying, and how much bad debt bans an account.

use chrono::{DateTime, TimeDelta, Utc};

/// Retries after the first failure, in days from it: Stripe's recommendation of 8 tries
/// within 2 weeks.
pub const RETRY_DAYS_DEFAULT: &str = "1,2,3,5,7,9,11,14";
/// Failed retries after which levels 2, 3 and 4 begin (level 1 from the first failure).
pub const LEVELS_AFTER_DEFAULT: &str = "2,4,6";
/// Most retries a policy may schedule.
pub const RETRIES_MAX: usize = 20;
/// Latest retry, in days after the first failure.
pub const RETRY_DAY_MAX: u32 = 90;

/// Declines a retry will not turn into a payment: the card is gone, refused for good, or
/// there is no usable method. They wait for a new payment method instead.
pub const HARD_DECLINES: &[&str] = &[
    "stolen_card",
    "lost_card",
    "pickup_card",
    "fraudulent",
    "merchant_blacklist",
    "restricted_card",
    "security_violation",
    "do_not_honor",
    "do_not_try_again",
    "revocation_of_authorization",
    "revocation_of_all_authorizations",
    "stop_payment_order",
    "transaction_not_allowed",
    "card_not_supported",
    "invalid_account",
    "incorrect_number",
    "invalid_number",
    "expired_card",
    "payment_method_required",
];

/// What becomes of the subscription when dunning gives its invoice up
/// (`TOLLGATE_DUNNING_ON_EXHAUSTION`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Exhaustion {
    /// Canceled: the customer buys a plan again once they can pay.
    #[default]
    Cancel,
    /// Kept as `unpaid`: not renewed, granting nothing, active again when its invoice is paid.
    Unpaid,
}

impl Exhaustion {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "cancel" => Ok(Self::Cancel),
            "unpaid" => Ok(Self::Unpaid),
            other => Err(format!("`{other}` is not `cancel` or `unpaid`")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Days after the first failure each retry runs, strictly increasing.
    pub retry_days: Vec<u32>,
    /// Failed retries after which levels 2, 3, 4 begin, non-decreasing.
    pub levels_after: [u32; 3],
    /// An account whose bad debt is above this (minor units) is banned.
    pub ban_over_minor: i64,
    /// What an exhausted case does to the subscription.
    pub on_exhaustion: Exhaustion,
}

impl Default for Policy {
    fn default() -> Self {
        Self::parse(RETRY_DAYS_DEFAULT, LEVELS_AFTER_DEFAULT, 0).expect("default policy")
    }
}

fn numbers(s: &str) -> Result<Vec<u32>, String> {
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<u32>()
                .map_err(|_| format!("`{}` is not a whole number of days", p.trim()))
        })
        .collect()
}

impl Policy {
    /// From `TOLLGATE_DUNNING_RETRY_DAYS`, `TOLLGATE_DUNNING_LEVELS_AFTER` and
    /// `TOLLGATE_DUNNING_BAN_OVER_MINOR`.
    pub fn parse(
        retry_days: &str,
        levels_after: &str,
        ban_over_minor: i64,
    ) -> Result<Self, String> {
        let days = numbers(retry_days)?;
        if days.is_empty() || days.len() > RETRIES_MAX {
            return Err(format!("1 to {RETRIES_MAX} retries, not {}", days.len()));
        }
        if days[0] == 0
            || days.windows(2).any(|w| w[0] >= w[1])
            || days.iter().any(|d| *d > RETRY_DAY_MAX)
        {
            return Err(format!(
                "retry days are increasing, from 1 to {RETRY_DAY_MAX}"
            ));
        }
        let levels = numbers(levels_after)?;
        let levels: [u32; 3] = levels
            .try_into()
            .map_err(|_| "three level thresholds (levels 2, 3 and 4)".to_owned())?;
        if levels.windows(2).any(|w| w[0] > w[1]) {
            return Err("level thresholds do not decrease".to_owned());
        }
        if ban_over_minor < 0 {
            return Err("the bad-debt ban threshold is not negative".to_owned());
        }
        Ok(Self {
            retry_days: days,
            levels_after: levels,
            ban_over_minor,
            on_exhaustion: Exhaustion::Cancel,
        })
    }

    /// When the retry after `failed` failed retries runs, or `None`: the schedule is used up.
    pub fn next_retry(&self, opened_at: DateTime<Utc>, failed: u32) -> Option<DateTime<Utc>> {
        let day = *self.retry_days.get(usize::try_from(failed).ok()?)?;
        Some(opened_at + TimeDelta::days(i64::from(day)))
    }

    /// The level after `failed` failed retries: 1 to 4.
    pub fn level(&self, failed: u32) -> i32 {
        1 + self.levels_after.iter().filter(|&&n| failed >= n).count() as i32
    }

    /// Whether a bad debt of `minor` bans the account.
    pub fn bans(&self, bad_debt_minor: i64) -> bool {
        bad_debt_minor > self.ban_over_minor
    }
}

/// Whether a decline is hard (no retries; a new payment method is required).
pub fn is_hard(code: &str, decline_code: Option<&str>) -> bool {
    HARD_DECLINES.contains(&code) || decline_code.is_some_and(|d| HARD_DECLINES.contains(&d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_default_retries_eight_times_within_two_weeks_in_four_levels() {
        let p = Policy::default();
        let opened = Utc
            .with_ymd_and_hms(2026, 2, 15, 13, 0, 0)
            .single()
            .unwrap();
        let days: Vec<i64> = (0..8)
            .map(|n| (p.next_retry(opened, n).unwrap() - opened).num_days())
            .collect();
        assert_eq!(days, [1, 2, 3, 5, 7, 9, 11, 14]);
        assert_eq!(p.next_retry(opened, 8), None, "exhausted after the eighth");
        let levels: Vec<i32> = (0..=8).map(|n| p.level(n)).collect();
        assert_eq!(levels, [1, 1, 2, 2, 3, 3, 4, 4, 4]);
        assert!(p.bans(1) && !p.bans(0));
    }

    #[test]
    fn hard_declines_are_told_apart_and_bad_policies_refused() {
        assert!(is_hard("card_declined", Some("stolen_card")));
        assert!(is_hard("expired_card", None));
        assert!(is_hard("payment_method_required", None));
        assert!(!is_hard("card_declined", Some("insufficient_funds")));
        assert!(!is_hard("card_declined", Some("generic_decline")));
        assert!(!is_hard(
            "authentication_required",
            Some("authentication_required")
        ));
        for (days, levels, ban) in [
            ("", "2,4,6", 0),
            ("0,1", "2,4,6", 0),
            ("3,2", "2,4,6", 0),
            ("1,1", "2,4,6", 0),
            ("1,91", "2,4,6", 0),
            ("1,x", "2,4,6", 0),
            ("1,2", "2,4", 0),
            ("1,2", "4,2,6", 0),
            ("1,2", "2,4,6", -1),
            (
                "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21",
                "2,4,6",
                0,
            ),
        ] {
            assert!(
                Policy::parse(days, levels, ban).is_err(),
                "{days} {levels} {ban}"
            );
        }
    }
}
