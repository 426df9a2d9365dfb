use super::membership::Member;
pub fn owners<'a>(key: &str, members: &'a [Member]) -> Vec<&'a Member> {
    let mut v: Vec<&Member> = members.iter().collect();
    let score = |m: &Member| {
        use sha2::Digest;
        let d = sha2::Sha256::digest(format!("{}\0{}", m.id, key).as_bytes());
        u64::from_be_bytes(d[..8].try_into().unwrap())
    };
    v.sort_by(|a, b| score(b).cmp(&score(a)).then(a.id.cmp(&b.id)));
    v
}
pub fn owner<'a>(key: &str, members: &'a [Member]) -> Option<&'a Member> {
    owners(key, members).into_iter().next()
}
