//! The library's token cache against the mock's token realm: tokens are
//! fetched once per (repository, actions) and shared by the clients of one
//! context, and a second repository gets a token of its own without
//! dropping the first.

use std::collections::HashMap;

use occystrap::registry::{Client, ClientOptions, Context, ContextOptions, MAX_CONFIG_BYTES};

use super::mock::MockRegistry;

fn plain() -> ClientOptions {
    ClientOptions {
        insecure: true,
        retries: 0,
        ..ClientOptions::default()
    }
}

/// The scope parameters of the mock's token requests, in order.
fn token_scopes(mock: &MockRegistry) -> Vec<String> {
    mock.requests()
        .iter()
        .filter(|r| r.path == "/token")
        .map(|r| {
            let q: HashMap<String, String> = url::form_urlencoded::parse(r.query.as_bytes())
                .into_owned()
                .collect();
            q.get("scope").cloned().unwrap_or_default()
        })
        .collect()
}

#[test]
fn tokens_are_fetched_once_per_repository_and_shared_by_a_context() {
    let mock = MockRegistry::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ctx = Context::new(ContextOptions::default());
        let client = Client::new(&ctx, &mock.host(), plain()).unwrap();
        client.get_manifest("team/app", "v1").await.unwrap();
        client.get_manifest("team/app", "v1").await.unwrap();
        let img = mock.image();
        let config = client
            .get_small_blob(
                "team/app",
                &img.config_digest.parse().unwrap(),
                img.config.len() as u64,
                MAX_CONFIG_BYTES,
            )
            .await
            .unwrap();
        assert_eq!(config, img.config);
        assert_eq!(token_scopes(&mock), ["repository:team/app:pull"]);

        // Another repository: its own token; the first one stays cached.
        let _ = client.get_manifest("team/other", "v1").await;
        let _ = client.get_manifest("team/other", "v1").await;
        client.get_manifest("team/app", "v1").await.unwrap();
        assert_eq!(
            token_scopes(&mock),
            ["repository:team/app:pull", "repository:team/other:pull"]
        );

        // A second client over the same context uses the cached tokens.
        let again = Client::new(&ctx, &mock.host(), plain()).unwrap();
        again.repo("team/app").get_manifest("v1").await.unwrap();
        assert_eq!(mock.token_requests(), 2, "{}", mock.describe_requests());

        // A client over another context does not.
        let fresh = Client::new(
            &Context::new(ContextOptions::default()),
            &mock.host(),
            plain(),
        )
        .unwrap();
        fresh.get_manifest("team/app", "v1").await.unwrap();
        assert_eq!(mock.token_requests(), 3, "{}", mock.describe_requests());
    });
}
