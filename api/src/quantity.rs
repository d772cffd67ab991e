//! Kubernetes resource quantities (`256Mi`, `1.5G`, `1e9`) as byte counts.

/// A quantity that does not parse, or that is not a whole, representable number of bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a quantity of bytes like 256Mi or 2Gi")]
pub struct ParseQuantityError(pub String);

/// Parses a quantity into bytes, rounding a fraction of a byte up as Kubernetes does.
pub fn parse_quantity(text: &str) -> Result<u64, ParseQuantityError> {
    let err = || ParseQuantityError(text.to_owned());
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(err());
    }
    // Exact arithmetic on the decimal digits: value = digits / 10^scale × multiplier.
    let digits: u128 = format!("{whole}{fraction}").parse().map_err(|_| err())?;
    let scale = u32::try_from(fraction.len()).map_err(|_| err())?;
    let (numerator, denominator): (u128, u128) = match suffix {
        "" => (1, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        "m" => (1, 1000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: u32 = exponent[1..].parse().map_err(|_| err())?;
            (10u128.checked_pow(power).ok_or_else(err)?, 1)
        }
        _ => return Err(err()),
    };
    let denominator = 10u128
        .checked_pow(scale)
        .and_then(|d| d.checked_mul(denominator))
        .ok_or_else(err)?;
    let bytes = digits.checked_mul(numerator).ok_or_else(err)?.div_ceil(denominator);
    u64::try_from(bytes).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_decimal_and_exponent_forms() {
        assert_eq!(parse_quantity("256Mi"), Ok(256 << 20));
        assert_eq!(parse_quantity("2Gi"), Ok(2 << 30));
        assert_eq!(parse_quantity("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_quantity("128974848"), Ok(128_974_848));
        assert_eq!(parse_quantity("129e6"), Ok(129_000_000));
        assert_eq!(parse_quantity("129M"), Ok(129_000_000));
        assert_eq!(parse_quantity("1k"), Ok(1000));
        assert_eq!(parse_quantity(".5Ki"), Ok(512));
    }

    #[test]
    fn fractions_of_a_byte_round_up() {
        assert_eq!(parse_quantity("1500m"), Ok(2));
        assert_eq!(parse_quantity("0.1"), Ok(1));
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in ["", "Mi", "1.2.3", "12 Mi", "-1", "1Zi", "1e", "1e40", "99999999999Ei"] {
            assert!(parse_quantity(bad).is_err(), "{bad:?}");
        }
    }
}
