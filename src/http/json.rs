//! JSON at the edge: the request body extractor, exact money, RFC 3339 times and the
//! `Idempotency-Key` header.
//!
//! Every way a body can be wrong (content type, size, encoding, syntax, types, missing or unknown
//! fields) becomes a 400/413/415 problem saying what is wrong; nothing here can answer 500.
//! Money never goes through `f64`: a JSON number's text (kept by serde_json's
//! `arbitrary_precision`) and a JSON string are parsed by the same exact decimal parser.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use chrono::{DateTime, SecondsFormat, Utc};
use gavel_rules::{check_money, Decimal, StampMs, MONEY_SCALE_MAX};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::http::problem::ApiError;

/// The longest `Idempotency-Key`, in bytes.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;
/// The longest money text we try to parse, in bytes (a valid amount needs about 20).
const MONEY_TEXT_LEN_MAX: usize = 64;
/// The longest time text we try to parse, in bytes.
const TIME_TEXT_LEN_MAX: usize = 64;
/// More integer digits than this is always above the money maximum (10^12 has 13).
const MONEY_INTEGER_DIGITS_MAX: i64 = 13;

/// A JSON request body of type `T`. Unknown fields must be refused by `T` itself
/// (`#[serde(deny_unknown_fields)]`).
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_json_content_type(request.headers())?;
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(body_rejection)?;
        parse_body(&bytes).map(JsonBody)
    }
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType(
            "missing Content-Type: expected application/json".into(),
        ));
    };
    let essence = value
        .to_str()
        .ok()
        .and_then(|text| text.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {:?} is not supported: expected application/json",
            String::from_utf8_lossy(value.as_bytes())
        )))
    }
}

fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("the request body is larger than this server accepts".into())
    } else {
        ApiError::BadRequest(format!(
            "cannot read the request body: {}",
            rejection.body_text()
        ))
    }
}

/// Parses a whole body as `T`, describing any failure for the client.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid UTF-8: {e}")))?;
    if text.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "the request body is empty: expected a JSON object".into(),
        ));
    }
    serde_json::from_str(text).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "invalid request body",
            _ => "malformed JSON",
        };
        ApiError::BadRequest(format!("{what}: {e}"))
    })
}

/// A money value as the client wrote it: a JSON string or the exact text of a JSON number.
/// Checked by [`parse_money`], which knows the field's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoneyText(pub String);

impl<'de> Deserialize<'de> for MoneyText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(text) => Ok(MoneyText(text)),
            // With `arbitrary_precision` this is the number exactly as written.
            serde_json::Value::Number(number) => Ok(MoneyText(number.as_str().to_owned())),
            other => Err(serde::de::Error::custom(format!(
                "invalid type: {}, expected a decimal string or number",
                json_kind(&other)
            ))),
        }
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Parses money exactly: `[-]digits[.digits][(e|E)[+|-]digits]`, at most 6 fractional digits
/// once trailing zeros are dropped, 0 <= amount <= 10^12. Returns the normalized amount.
pub fn parse_money(field: &str, text: &MoneyText) -> Result<Decimal, ApiError> {
    let bad = |why: String| ApiError::BadRequest(why);
    let text = text.0.as_str();
    if text.is_empty() || text.len() > MONEY_TEXT_LEN_MAX {
        return Err(bad(format!(
            "{field} must be a decimal amount such as \"125.50\""
        )));
    }
    let parts = split_number(text)
        .ok_or_else(|| bad(format!("{field} is not a decimal amount: {text:?}")))?;
    let amount = parts.to_decimal(field)?;
    check_money(field, amount).map_err(bad)?;
    Ok(amount.normalize())
}

/// A decimal number split into sign, significant digits and a power of ten.
struct NumberParts {
    negative: bool,
    /// Significant digits without leading or trailing zeros ("" for zero).
    digits: String,
    /// The value is `digits * 10^exponent`; `None` when the exponent overflowed `i64`.
    exponent: Option<i64>,
    /// The sign of an overflowed exponent.
    exponent_negative: bool,
}

fn split_number(text: &str) -> Option<NumberParts> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exp_text) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((int, frac)) => (int, frac),
        None => (mantissa, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !all_digits(int) || !all_digits(frac) || mantissa.ends_with('.') {
        return None;
    }
    let (exp_value, exp_negative) = match exp_text {
        None => (Some(0i64), false),
        Some(exp) => parse_exponent(exp)?,
    };
    let joined = format!("{int}{frac}");
    let trimmed_left = joined.trim_start_matches('0');
    let digits = trimmed_left.trim_end_matches('0');
    let trailing_zeros = trimmed_left.len() - digits.len();
    let shift = i64::try_from(trailing_zeros).ok()? - i64::try_from(frac.len()).ok()?;
    Some(NumberParts {
        negative,
        digits: digits.to_owned(),
        exponent: exp_value.and_then(|e| e.checked_add(shift)),
        exponent_negative: exp_negative,
    })
}

/// Parses an exponent's `[+|-]digits`. The value is `None` when it overflows `i64`.
fn parse_exponent(exp: &str) -> Option<(Option<i64>, bool)> {
    let (negative, digits) = match exp.as_bytes().first() {
        Some(b'-') => (true, &exp[1..]),
        Some(b'+') => (false, &exp[1..]),
        _ => (false, exp),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value = digits
        .parse::<i64>()
        .ok()
        .map(|v| if negative { -v } else { v });
    Some((value, negative))
}

impl NumberParts {
    /// The exact value, or the reason it is outside anything the rules accept. Values inside
    /// the representable range are left to `check_money` for the final word.
    fn to_decimal(&self, field: &str) -> Result<Decimal, ApiError> {
        if self.digits.is_empty() {
            return Ok(Decimal::ZERO);
        }
        if self.negative {
            return Err(ApiError::BadRequest(format!(
                "{field} must not be negative"
            )));
        }
        let too_large = || ApiError::BadRequest(format!("{field} must be at most 1000000000000"));
        let too_precise = || {
            ApiError::BadRequest(format!(
                "{field} must have at most {MONEY_SCALE_MAX} fractional digits"
            ))
        };
        let exponent = match self.exponent {
            Some(exponent) => exponent,
            None if self.exponent_negative => return Err(too_precise()),
            None => return Err(too_large()),
        };
        if exponent < -i64::from(MONEY_SCALE_MAX) {
            return Err(too_precise());
        }
        let digit_count = i64::try_from(self.digits.len()).unwrap_or(i64::MAX);
        if digit_count.saturating_add(exponent) > MONEY_INTEGER_DIGITS_MAX {
            return Err(too_large());
        }
        // Now at most 13 + 6 significant digits and 0 <= exponent + 6: fits i128 and Decimal.
        let mantissa = self
            .digits
            .bytes()
            .fold(0i128, |acc, digit| acc * 10 + i128::from(digit - b'0'));
        let (mantissa, scale) = match u32::try_from(exponent) {
            Ok(up) => (mantissa * 10i128.pow(up), 0),
            Err(_) => (mantissa, exponent.unsigned_abs() as u32),
        };
        Decimal::try_from_i128_with_scale(mantissa, scale).map_err(|_| too_large())
    }
}

/// Money as sent: a string with at least two fractional digits ("100.00", "1.234").
pub fn format_money(amount: Decimal) -> String {
    let mut normalized = amount.normalize();
    if normalized.scale() < 2 {
        normalized.rescale(2);
    }
    normalized.to_string()
}

/// Parses an RFC 3339 time to milliseconds since the epoch (sub-millisecond digits are
/// truncated toward the past).
pub fn parse_time(field: &str, text: &str) -> Result<StampMs, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "{field} must be an RFC 3339 time such as \"2026-11-25T22:00:00Z\""
        ))
    };
    if text.len() > TIME_TEXT_LEN_MAX {
        return Err(bad());
    }
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.timestamp_millis())
        .map_err(|_| bad())
}

/// A time as sent: UTC with milliseconds, `2026-11-25T22:00:00.000Z`.
pub fn format_time(ms: StampMs) -> String {
    let time = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or(if ms < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    });
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The `Idempotency-Key` header: `None` when absent, an error when present but not 1-255
/// printable ASCII characters or given more than once.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be given at most once".into(),
        ));
    }
    let bytes = value.as_bytes();
    let printable = bytes.iter().all(|b| (0x20..=0x7e).contains(b));
    if bytes.is_empty() || bytes.len() > IDEMPOTENCY_KEY_LEN_MAX || !printable {
        return Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1-{IDEMPOTENCY_KEY_LEN_MAX} printable ASCII characters"
        )));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn money(text: &str) -> Result<Decimal, String> {
        parse_money("amount", &MoneyText(text.into())).map_err(|e| e.to_string())
    }

    fn dec(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    #[test]
    fn money_from_strings_is_exact_and_normalized() {
        assert_eq!(money("125.50").unwrap(), dec("125.5"));
        assert_eq!(money("125.50").unwrap().scale(), 1);
        assert_eq!(money("0").unwrap(), Decimal::ZERO);
        assert_eq!(money("-0").unwrap(), Decimal::ZERO);
        assert_eq!(money("0.000001").unwrap(), dec("0.000001"));
        assert_eq!(money("1000000000000").unwrap(), dec("1000000000000"));
        assert_eq!(money("1000000000000.000000").unwrap(), dec("1000000000000"));
        assert_eq!(money("007.10").unwrap(), dec("7.1"));
        assert_eq!(money("1.2345670").unwrap(), dec("1.234567"));
    }

    #[test]
    fn money_with_exponents() {
        assert_eq!(money("1e3").unwrap(), dec("1000"));
        assert_eq!(money("1E+3").unwrap(), dec("1000"));
        assert_eq!(money("12.5e-2").unwrap(), dec("0.125"));
        assert_eq!(money("1000000e-6").unwrap(), dec("1"));
        assert_eq!(money("0e999999999999999999999").unwrap(), Decimal::ZERO);
        assert_eq!(money("1e12").unwrap(), dec("1000000000000"));
        assert!(money("1e13").unwrap_err().contains("at most 1000000000000"));
        assert!(money("1e-7").unwrap_err().contains("fractional digits"));
        assert!(money("1e99999999999999999999")
            .unwrap_err()
            .contains("at most"));
        assert!(money("1e-99999999999999999999")
            .unwrap_err()
            .contains("fractional"));
    }

    #[test]
    fn money_limits() {
        assert!(money("-1").unwrap_err().contains("negative"));
        assert!(money("-0.000001").unwrap_err().contains("negative"));
        assert!(money("-1e40").unwrap_err().contains("negative"));
        assert!(money("1.0000001")
            .unwrap_err()
            .contains("fractional digits"));
        assert!(money("1000000000000.000001")
            .unwrap_err()
            .contains("at most"));
        assert!(money("1000000000001").unwrap_err().contains("at most"));
        assert!(money("99999999999999999999999999999999")
            .unwrap_err()
            .contains("at most"));
    }

    #[test]
    fn money_garbage() {
        for text in [
            "", " 1", "1 ", "abc", "NaN", "nan", "Infinity", "1.", ".5", "+1", "1..2", "1e", "1e+",
            "0x10", "1,5", "١", "--1", "1.2.3", "e5",
        ] {
            assert!(money(text).is_err(), "{text:?} was accepted");
        }
        let long = "1".repeat(100);
        assert!(money(&long).is_err());
    }

    #[test]
    fn money_from_json_numbers_keeps_the_text() {
        #[derive(Deserialize)]
        struct Body {
            amount: MoneyText,
        }
        let body: Body = serde_json::from_str(r#"{"amount": 0.1000000}"#).unwrap();
        assert_eq!(body.amount.0, "0.1000000");
        assert_eq!(parse_money("amount", &body.amount).unwrap(), dec("0.1"));
        let body: Body = serde_json::from_str(r#"{"amount": 123456789012.123456}"#).unwrap();
        assert_eq!(
            parse_money("amount", &body.amount).unwrap(),
            dec("123456789012.123456")
        );
        let body: Body = serde_json::from_str(r#"{"amount": 2.5E2}"#).unwrap();
        assert_eq!(parse_money("amount", &body.amount).unwrap(), dec("250"));
        let err = serde_json::from_str::<Body>(r#"{"amount": true}"#)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("expected a decimal string or number"), "{err}");
        assert!(serde_json::from_str::<Body>(r#"{"amount": null}"#).is_err());
    }

    #[test]
    fn money_formatting() {
        assert_eq!(format_money(dec("100")), "100.00");
        assert_eq!(format_money(dec("125.5")), "125.50");
        assert_eq!(format_money(dec("1.234")), "1.234");
        assert_eq!(format_money(dec("1.2340000")), "1.234");
        assert_eq!(format_money(dec("0")), "0.00");
        assert_eq!(format_money(dec("-0")), "0.00");
        assert_eq!(format_money(dec("1000000000000")), "1000000000000.00");
        assert_eq!(format_money(dec("0.000001")), "0.000001");
    }

    #[test]
    fn time_round_trip() {
        let ms = parse_time("endAt", "2026-11-25T22:00:00Z").unwrap();
        assert_eq!(format_time(ms), "2026-11-25T22:00:00.000Z");
        let ms = parse_time("endAt", "2026-11-25T23:00:00.123+01:00").unwrap();
        assert_eq!(format_time(ms), "2026-11-25T22:00:00.123Z");
        let ms = parse_time("endAt", "2026-11-25T22:00:00.1239999Z").unwrap();
        assert_eq!(format_time(ms), "2026-11-25T22:00:00.123Z");
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(-1), "1969-12-31T23:59:59.999Z");
        assert!(!format_time(i64::MAX).is_empty());
    }

    #[test]
    fn bad_times() {
        for text in [
            "",
            "2026-11-25",
            "2026-11-25T22:00:00",
            "tomorrow",
            "2026-13-01T00:00:00Z",
            "1700000000",
        ] {
            let err = parse_time("startAt", text).unwrap_err().to_string();
            assert!(err.starts_with("startAt must be an RFC 3339 time"), "{err}");
        }
    }

    #[test]
    fn idempotency_keys() {
        let mut headers = HeaderMap::new();
        assert_eq!(idempotency_key(&headers).unwrap(), None);
        headers.insert("idempotency-key", "abc-123 ~!".parse().unwrap());
        assert_eq!(
            idempotency_key(&headers).unwrap().as_deref(),
            Some("abc-123 ~!")
        );
        headers.insert("idempotency-key", "x".repeat(256).parse().unwrap());
        assert!(idempotency_key(&headers).is_err());
        headers.insert("idempotency-key", "".parse().unwrap());
        assert!(idempotency_key(&headers).is_err());
        headers.insert(
            "idempotency-key",
            axum::http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert!(idempotency_key(&headers).is_err());
        headers.insert("idempotency-key", "a".parse().unwrap());
        headers.append("idempotency-key", "b".parse().unwrap());
        assert!(idempotency_key(&headers).is_err());
    }

    #[test]
    fn body_errors_say_what_is_wrong() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Body {
            amount: MoneyText,
        }
        let err = |bytes: &[u8]| parse_body::<Body>(bytes).unwrap_err().to_string();
        assert!(err(b"").contains("empty"));
        assert!(err(b"\xff\xfe").contains("UTF-8"));
        assert!(err(b"{").contains("malformed JSON"));
        assert!(err(b"[]").contains("invalid request body"));
        assert!(err(br#"{}"#).contains("missing field `amount`"));
        assert!(err(br#"{"amount":"1","x":1}"#).contains("unknown field `x`"));
        assert!(err(br#"{"amount":"1","amount":"2"}"#).contains("duplicate field"));
        assert!(err(br#"{"amount":"1"} trailing"#).contains("malformed JSON"));
        assert!(parse_body::<Body>(br#"{"amount":"1"}"#).is_ok());
    }
}
