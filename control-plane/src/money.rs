//! Money: integer minor units of an ISO-4217 currency, never floats, checked arithmetic only.
//!
//! [`Currency`] is three upper-case ASCII letters (`USD`), stored as text in SQL. Amounts stay
//! `i64` minor units wherever they are stored; sums and products go through the checked helpers
//! here, so an overflow is an error a caller sees, never a wrapped number on an invoice.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ISO-4217 code, upper-case (`USD`, `EUR`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    pub const USD: Currency = Currency(*b"USD");

    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        (b.len() == 3 && b.iter().all(u8::is_ascii_uppercase)).then(|| Self([b[0], b[1], b[2]]))
    }

    pub fn as_str(&self) -> &str {
        // Three ASCII letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an ISO-4217 currency code (three upper-case letters)")]
pub struct BadCurrency(pub String);

impl FromStr for Currency {
    type Err = BadCurrency;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| BadCurrency(s.to_owned()))
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl utoipa::PartialSchema for Currency {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .pattern(Some("^[A-Z]{3}$"))
            .description(Some("An ISO-4217 code, upper-case (`USD`)."))
            .into()
    }
}

impl utoipa::ToSchema for Currency {}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| serde::de::Error::custom(BadCurrency(s.into_owned())))
    }
}

impl sqlx::Type<sqlx::Postgres> for Currency {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<sqlx::Postgres>>::type_info()
    }
    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            || <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            || *ty == sqlx::postgres::PgTypeInfo::with_name("bpchar")
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Postgres> for Currency {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for Currency {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let s = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        Ok(Self::parse(s).ok_or_else(|| BadCurrency(s.to_owned()))?)
    }
}

/// An amount that does not fit in `i64` minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("amount out of range")]
pub struct Overflow;

/// `a + b`, or [`Overflow`].
pub fn add(a: i64, b: i64) -> Result<i64, Overflow> {
    a.checked_add(b).ok_or(Overflow)
}

/// `a − b`, or [`Overflow`].
pub fn sub(a: i64, b: i64) -> Result<i64, Overflow> {
    a.checked_sub(b).ok_or(Overflow)
}

/// `a × b`, or [`Overflow`].
pub fn mul(a: i64, b: i64) -> Result<i64, Overflow> {
    a.checked_mul(b).ok_or(Overflow)
}

/// The sum of `amounts`, or [`Overflow`] when it (not just a partial sum) leaves `i64`.
pub fn sum(amounts: impl IntoIterator<Item = i64>) -> Result<i64, Overflow> {
    let total: i128 = amounts.into_iter().map(i128::from).sum();
    i64::try_from(total).map_err(|_| Overflow)
}

/// Minor-unit exponent of a currency (ISO 4217): most have 2.
fn exponent(c: Currency) -> u32 {
    match c.as_str() {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// `-1234` USD → `-12.34 USD`; exact for any `i64`.
pub fn format(amount_minor: i64, c: Currency) -> String {
    format!("{} {c}", decimal(amount_minor, c))
}

/// `-1234` USD → `-12.34` (as providers that take decimal strings want it); exact for any
/// `i64`.
pub fn decimal(amount_minor: i64, c: Currency) -> String {
    let e = exponent(c);
    let sign = if amount_minor < 0 { "-" } else { "" };
    let abs = amount_minor.unsigned_abs();
    if e == 0 {
        return format!("{sign}{abs}");
    }
    let unit = 10u64.pow(e);
    format!(
        "{sign}{}.{:0width$}",
        abs / unit,
        abs % unit,
        width = e as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currencies_are_three_upper_case_letters() {
        assert_eq!(Currency::parse("USD"), Some(Currency::USD));
        for bad in ["usd", "US", "USDX", "U$D", "", "ÜSD"] {
            assert_eq!(Currency::parse(bad), None, "{bad}");
        }
        let json = serde_json::to_string(&Currency::USD).unwrap();
        assert_eq!(json, "\"USD\"");
        assert!(serde_json::from_str::<Currency>("\"usd\"").is_err());
    }

    #[test]
    fn sums_are_checked_as_a_whole() {
        assert_eq!(sum([i64::MAX, 1, -1]), Ok(i64::MAX));
        assert_eq!(sum([i64::MAX, 1]), Err(Overflow));
        assert_eq!(add(i64::MAX, 1), Err(Overflow));
        assert_eq!(mul(i64::MAX / 2, 3), Err(Overflow));
        assert_eq!(sub(i64::MIN, 1), Err(Overflow));
    }

    #[test]
    fn money_is_written_exactly_in_the_currency_s_minor_unit() {
        let usd = Currency::USD;
        assert_eq!(format(290_000, usd), "2900.00 USD");
        assert_eq!(format(-1497, usd), "-14.97 USD");
        assert_eq!(format(5, usd), "0.05 USD");
        assert_eq!(format(i64::MIN, usd), "-92233720368547758.08 USD");
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(format(1500, jpy), "1500 JPY");
        let kwd = Currency::parse("KWD").unwrap();
        assert_eq!(format(1500, kwd), "1.500 KWD");
    }
}
