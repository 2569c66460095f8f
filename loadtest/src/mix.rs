//! Realistic tracking-call mixes: many advertisers with catalogs,
//! impressions, product views, carts, purchases and clicks, with a chosen
//! share of broken tags (unknown products, bad currency, missing order ids,
//! disallowed click targets, unknown advertisers). Deterministic per seed.

use std::fmt::Write as _;
use std::path::Path;

/// A small, fast, seeded generator (xorshift64*), enough for URL mixes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Percent of the whole mix that is impressions: the first arm of the
/// draw in `requests`, and all an impression mix draws from.
const IMPRESSION_PERCENT: u64 = 60;

/// Which calls a mix sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kinds {
    /// Impressions 60%, view_item 15%, add_to_cart 8%, purchase 5%,
    /// clicks 12%.
    All,
    /// Impression pixels (`/i`) only, half of them naming a product: the
    /// call nginx's `empty_gif` stands for.
    Impressions,
}

/// The shape of the mix.
#[derive(Debug, Clone, Copy)]
pub struct MixSpec {
    pub advertisers: usize,
    pub products: usize,
    pub invalid_percent: u64,
    pub seed: u64,
    pub kinds: Kinds,
}

fn sku(adv: usize, j: usize) -> String {
    format!("sku-{adv}-{j}")
}

/// Writes one catalog per advertiser and a trackplane config that knows
/// them (with their click hosts) under `dir`.
pub fn write_setup(dir: &Path, spec: &MixSpec) -> std::io::Result<()> {
    let catalogs = dir.join("catalogs");
    std::fs::create_dir_all(&catalogs)?;
    let mut config = String::from("# Written by `loadtest setup`.\n");
    for a in 0..spec.advertisers {
        let mut ids = String::with_capacity(spec.products * 16);
        for j in 0..spec.products {
            ids.push_str(&sku(a, j));
            ids.push('\n');
        }
        std::fs::write(catalogs.join(format!("adv-{a}.txt")), ids)?;
        let _ = writeln!(
            config,
            "[advertisers.adv-{a}]\nredirect_hosts = [\"shop{a}.example\", \"*.shop{a}.example\"]"
        );
    }
    // Keep the default event types: advertisers replace the default whole,
    // event types stay as embedded.
    std::fs::write(dir.join("trackplane.toml"), config)
}

const AGENTS: [&str; 3] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
];

/// `count` complete GET requests following `spec`.
pub fn requests(spec: &MixSpec, count: usize, host: &str) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(spec.seed);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let a = rng.below(spec.advertisers as u64) as usize;
        let pick = |rng: &mut Rng| sku(a, rng.below(spec.products as u64) as usize);
        let uid = format!("u{}", rng.below(1_000_000));
        let kind = match spec.kinds {
            Kinds::All => rng.below(100),
            Kinds::Impressions => rng.below(IMPRESSION_PERCENT),
        };
        let mut target = match kind {
            0..IMPRESSION_PERCENT => {
                let mut t = format!("/i?adv=adv-{a}&uid={uid}");
                if rng.chance(50) {
                    let _ = write!(t, "&pid={}", pick(&mut rng));
                }
                t
            }
            60..=74 => format!("/e?adv=adv-{a}&ev=view_item&pid={}&uid={uid}", pick(&mut rng)),
            75..=82 => format!("/e?adv=adv-{a}&ev=add_to_cart&pid={}&value={}.{:02}&currency=EUR&uid={uid}", pick(&mut rng), rng.below(300), rng.below(100)),
            83..=87 => format!(
                "/e?adv=adv-{a}&ev=purchase&order_id=o-{i}&value={}.{:02}&currency=EUR&pid={}%2C{}&uid={uid}",
                rng.below(900),
                rng.below(100),
                pick(&mut rng),
                pick(&mut rng)
            ),
            _ => format!("/c?adv=adv-{a}&url=https%3A%2F%2Fwww.shop{a}.example%2Fp%2F{}&uid={uid}", rng.below(100_000)),
        };
        if rng.chance(spec.invalid_percent) {
            // Draw defects until one applies to this call; an unknown
            // advertiser applies to every call.
            let unknown = target.replace(&format!("adv=adv-{a}&"), "adv=unknown-adv&");
            let first = rng.below(5);
            target = (0..5)
                .map(|k| match (first + k) % 5 {
                    0 => target.replace("sku-", "gone-"),
                    1 => target.replace("currency=EUR", "currency=EURO"),
                    2 => target.replace("&order_id=", "&order="),
                    3 => target.replace(".example%2F", ".evil%2F"),
                    _ => unknown.clone(),
                })
                .find(|t| *t != target)
                .unwrap_or(unknown);
        }
        let agent = AGENTS[rng.below(3) as usize];
        out.push(
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\nReferer: https://www.shop{a}.example/cat/{}\r\nAccept: image/avif,image/webp,*/*\r\n\r\n", rng.below(1000))
                .into_bytes(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kinds: Kinds) -> MixSpec {
        MixSpec {
            advertisers: 5,
            products: 100,
            invalid_percent: 10,
            seed: 7,
            kinds,
        }
    }

    fn path(req: &[u8]) -> &str {
        std::str::from_utf8(&req[4..7]).unwrap()
    }

    #[test]
    fn the_whole_mix_sends_every_kind_of_call() {
        let reqs = requests(&spec(Kinds::All), 2_000, "h");
        let share = |p: &str| reqs.iter().filter(|r| path(r) == p).count();
        assert!((1_000..1_400).contains(&share("/i?")), "{}", share("/i?"));
        assert!(share("/e?") > 400 && share("/c?") > 150);
    }

    #[test]
    fn an_impression_mix_sends_only_pixels() {
        let reqs = requests(&spec(Kinds::Impressions), 2_000, "h");
        assert!(reqs.iter().all(|r| path(r) == "/i?"));
        let with_product = reqs
            .iter()
            .filter(|r| r.windows(5).any(|w| w == b"&pid="))
            .count();
        assert!((800..1_200).contains(&with_product), "{with_product}");
    }
}
