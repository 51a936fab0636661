//! `gavel bench bids --via`: which member each request goes to. By default clients are spread
//! round-robin over the endpoints, so where the leaders happen to sit decides how many requests
//! a member forwards to a leader, on Gavel and on etcd alike: a comparison of one client's
//! latency then compares where each system's elections landed. `leader` sends each auction's
//! requests to the member that leads it (Gavel: the leader of the auction's Raft group; etcd:
//! the cluster's leader), `follower` to the first endpoint that does not.
//!
//! Routes are found once, before the run (after Gavel's leaders have settled); a leader that
//! moves during the run is not followed.

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// Which member each request goes to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Round-robin over `--endpoints`, client by client.
    #[default]
    Any,
    /// The member that leads the auction (its group's leader; etcd's leader).
    Leader,
    /// An endpoint that does not lead the auction.
    Follower,
}

/// The endpoint (index into the endpoints) that `via` picks, given the node id behind each
/// endpoint and the leader's id; `None` when no endpoint fits.
pub fn pick(via: Via, members: &[u64], leader: u64) -> Option<usize> {
    match via {
        Via::Any => None,
        Via::Leader => members.iter().position(|&m| m == leader),
        Via::Follower => members.iter().position(|&m| m != leader),
    }
}

/// Per Gavel auction, the endpoint its requests go to. Reads each endpoint's node id
/// (`/healthz`) and the group leaders (`/cluster`, with the admin token).
pub async fn gavel_routes(
    http: &reqwest::Client,
    endpoints: &[String],
    admin: Option<&str>,
    auction_ids: &[String],
    via: Via,
) -> anyhow::Result<Option<Vec<usize>>> {
    if via == Via::Any {
        return Ok(None);
    }
    let Some(admin) = admin else {
        bail!("--via needs GET /cluster: give the tool the auth secret, not --token");
    };
    let mut members = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let health = get_json(http.get(format!("{endpoint}/healthz")), endpoint).await?;
        let id = health["nodeId"]
            .as_u64()
            .with_context(|| format!("{endpoint}/healthz names no nodeId: {health}"))?;
        members.push(id);
    }
    let base = &endpoints[0];
    let status = get_json(
        http.get(format!("{base}/cluster?digests=false"))
            .bearer_auth(admin),
        base,
    )
    .await?;
    let groups = status["groups"].as_array().map_or(&[][..], Vec::as_slice);
    let count = u32::try_from(groups.len()).unwrap_or(u32::MAX).max(1);
    auction_ids
        .iter()
        .map(|id| {
            let group = gavel_cluster::group_of(id, count);
            let leader = groups
                .iter()
                .find(|g| g["id"].as_u64() == Some(u64::from(group)))
                .and_then(|g| g["leader"].as_u64())
                .with_context(|| format!("group {group} has no leader at {base}"))?;
            pick(via, &members, leader).with_context(|| no_fit(via, &members, leader))
        })
        .collect::<anyhow::Result<Vec<usize>>>()
        .map(Some)
}

/// Per etcd key, the endpoint its puts go to (one for all: etcd has one leader). Reads each
/// member's id and its leader's from the JSON gateway (`POST /v3/maintenance/status`).
pub async fn etcd_routes(
    http: &reqwest::Client,
    endpoints: &[String],
    keys: usize,
    via: Via,
) -> anyhow::Result<Option<Vec<usize>>> {
    if via == Via::Any {
        return Ok(None);
    }
    let mut members = Vec::with_capacity(endpoints.len());
    let mut leader = None;
    for endpoint in endpoints {
        let request = http
            .post(format!("{endpoint}/v3/maintenance/status"))
            .json(&json!({}));
        let status = get_json(request, endpoint).await?;
        let (member, its_leader) = etcd_member_and_leader(&status)
            .with_context(|| format!("{endpoint}/v3/maintenance/status: {status}"))?;
        members.push(member);
        leader = leader.or(Some(its_leader));
    }
    let leader = leader.context("no endpoint")?;
    let route = pick(via, &members, leader).with_context(|| no_fit(via, &members, leader))?;
    Ok(Some(vec![route; keys.max(1)]))
}

/// A member's id and its leader's from etcd's status answer. The JSON gateway writes 64-bit
/// integers as strings.
fn etcd_member_and_leader(status: &Value) -> Option<(u64, u64)> {
    let number = |v: &Value| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    let member = number(&status["header"]["member_id"])?;
    let leader = number(&status["leader"]).filter(|&l| l != 0)?;
    Some((member, leader))
}

fn no_fit(via: Via, members: &[u64], leader: u64) -> String {
    match via {
        Via::Follower => format!(
            "--via follower: every endpoint is the leader (member {leader}); give another member"
        ),
        _ => format!("--via leader: no endpoint is the leader (member {leader}; endpoints are members {members:?})"),
    }
}

async fn get_json(request: reqwest::RequestBuilder, endpoint: &str) -> anyhow::Result<Value> {
    let response = request
        .send()
        .await
        .with_context(|| format!("asking {endpoint} who leads"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("asking {endpoint} who leads: {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{endpoint} answered {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_or_the_first_other_endpoint_is_picked() {
        assert_eq!(pick(Via::Leader, &[3, 1, 2], 1), Some(1));
        assert_eq!(pick(Via::Follower, &[1, 3, 2], 1), Some(1));
        assert_eq!(pick(Via::Follower, &[1], 1), None);
        assert_eq!(pick(Via::Leader, &[2, 3], 1), None);
        assert_eq!(pick(Via::Any, &[1, 2], 1), None);
    }

    #[test]
    fn etcd_ids_are_read_as_strings_or_numbers() {
        let status = json!({
            "header": { "cluster_id": "1", "member_id": "10501334649042878790" },
            "leader": "10501334649042878790",
        });
        assert_eq!(
            etcd_member_and_leader(&status),
            Some((10_501_334_649_042_878_790, 10_501_334_649_042_878_790))
        );
        let numbers = json!({ "header": { "member_id": 7 }, "leader": 9 });
        assert_eq!(etcd_member_and_leader(&numbers), Some((7, 9)));
        // No leader yet (0), or no header: nothing to route by.
        let leaderless = json!({ "header": { "member_id": "7" }, "leader": "0" });
        assert_eq!(etcd_member_and_leader(&leaderless), None);
        assert_eq!(etcd_member_and_leader(&json!({})), None);
    }
}
