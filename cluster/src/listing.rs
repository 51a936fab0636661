//! Merging per-group auction pages into one newest-first page across the node's groups.
//!
//! Each group reports its matches and, when it stopped early, a frontier: everything newer than
//! the frontier was scanned. Across groups only items at or above the highest frontier are
//! known complete, so the page never skips an auction that a later page would miss.

use gavel_storage::{AuctionCursor, AuctionPage};

use crate::api::AuctionListing;

pub fn merge_pages(pages: Vec<AuctionPage>, limit: usize) -> AuctionListing {
    let complete_down_to = pages.iter().filter_map(|p| p.frontier.clone()).max();
    let mut auctions: Vec<_> = pages
        .into_iter()
        .flat_map(|p| p.auctions)
        .filter(|a| {
            complete_down_to
                .as_ref()
                .is_none_or(|f| AuctionCursor::of(a) >= *f)
        })
        .collect();
    auctions.sort_by_key(|a| std::cmp::Reverse(AuctionCursor::of(a)));
    if auctions.len() > limit {
        auctions.truncate(limit);
        let next = auctions.last().map(AuctionCursor::of);
        return AuctionListing { auctions, next };
    }
    if auctions.len() == limit && limit > 0 {
        let next = auctions.last().map(AuctionCursor::of);
        return AuctionListing { auctions, next };
    }
    AuctionListing {
        auctions,
        next: complete_down_to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_rules::{Auction, CreateAuction, Decimal, Status};

    fn auction(created_at_ms: i64, id: &str) -> Auction {
        Auction {
            id: id.into(),
            post_id: "p".into(),
            creator_id: "c".into(),
            status: Status::Active,
            start_at_ms: 0,
            end_at_ms: 1,
            start_price: Decimal::ONE,
            min_increment: Decimal::ONE,
            anti_sniping_seconds: 0,
            current_price: Decimal::ONE,
            current_winner_id: None,
            bid_count: 0,
            decision_count: 0,
            version: 1,
            created_at_ms,
            ended_at_ms: None,
            paused_at_ms: None,
            create_key: None,
            create_request: CreateAuction {
                post_id: "p".into(),
                start_at_ms: 0,
                end_at_ms: 1,
                start_price: Decimal::ONE,
                min_increment: Decimal::ONE,
                anti_sniping_seconds: 0,
            },
        }
    }

    fn ids(listing: &AuctionListing) -> Vec<&str> {
        listing.auctions.iter().map(|a| a.id.as_str()).collect()
    }

    #[test]
    fn merges_newest_first_and_cuts_at_limit() {
        let a = AuctionPage {
            auctions: vec![auction(9, "a9"), auction(5, "a5")],
            frontier: None,
        };
        let b = AuctionPage {
            auctions: vec![auction(7, "b7"), auction(1, "b1")],
            frontier: None,
        };
        let listing = merge_pages(vec![a, b], 3);
        assert_eq!(ids(&listing), ["a9", "b7", "a5"]);
        assert_eq!(
            listing.next,
            Some(AuctionCursor {
                created_at_ms: 5,
                id: "a5".into()
            })
        );
    }

    #[test]
    fn never_passes_a_group_that_stopped_early() {
        // Group b scanned only down to 7; group a's older match at 5 must wait for the next page.
        let a = AuctionPage {
            auctions: vec![auction(9, "a9"), auction(5, "a5")],
            frontier: None,
        };
        let b = AuctionPage {
            auctions: vec![],
            frontier: Some(AuctionCursor {
                created_at_ms: 7,
                id: "b7".into(),
            }),
        };
        let listing = merge_pages(vec![a, b], 10);
        assert_eq!(ids(&listing), ["a9"]);
        assert_eq!(
            listing.next,
            Some(AuctionCursor {
                created_at_ms: 7,
                id: "b7".into()
            })
        );
    }

    #[test]
    fn last_page_has_no_cursor() {
        let a = AuctionPage {
            auctions: vec![auction(2, "a2")],
            frontier: None,
        };
        let listing = merge_pages(vec![a, AuctionPage::default()], 5);
        assert_eq!(ids(&listing), ["a2"]);
        assert_eq!(listing.next, None);
    }
}
