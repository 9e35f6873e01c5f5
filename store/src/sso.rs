//! OIDC single sign-on: a tenant's identity provider (issuer, client, claim -> role rules, the
//! email domains open to just-in-time users), and the sign-in attempts under way.
//!
//! The store never sees the client secret: fleetd seals it (api's `oidc::secret`) with a key kept
//! outside the database, and the store keeps the sealed bytes. Attempts are kept as SHA-256 hashes
//! of their `state`, `nonce` and browser cookie, and [`consume_attempt`] deletes the row it
//! returns, so a state (and its nonce) completes at most one sign-in on any fleetd.

use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;

use crate::api_keys::Role;
use crate::audit::{self, Action, Actor, Target};
use crate::{StoreError, TenantId, TenantTx};

/// Most claim -> role rules per provider.
pub const MAX_ROLE_MAPPINGS: usize = 64;
/// Most allowed email domains per provider.
pub const MAX_EMAIL_DOMAINS: usize = 64;
/// Most extra scopes per provider.
pub const MAX_EXTRA_SCOPES: usize = 16;
/// Most sign-in attempts under way per tenant; past it `start` is refused until some expire.
pub const MAX_PENDING_ATTEMPTS: i64 = 10_000;

/// One claim -> role rule: an ID token whose claim `claim` is `value` (or is an array holding
/// `value`, as group claims are) gets `role`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleMapping {
    /// The claim's name, e.g. `groups`.
    pub claim: String,
    /// The value that grants the role, e.g. `fleet-admins`.
    pub value: String,
    /// The role granted.
    pub role: Role,
}

/// A tenant's identity provider, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct OidcProvider {
    /// The issuer URL, exactly as the provider's discovery document and ID tokens spell it.
    pub issuer: String,
    /// The client id fleetd signs in with.
    pub client_id: String,
    /// The client secret sealed by fleetd: opaque here.
    pub client_secret_sealed: Vec<u8>,
    /// Claim -> role rules: the highest role among those that match.
    pub role_mappings: Vec<RoleMapping>,
    /// The role when no rule matches; `None`: such a sign-in is refused.
    pub default_role: Option<Role>,
    /// Lower-case email domains whose verified addresses may get a user at first sign-in.
    pub allowed_email_domains: Vec<String>,
    /// Scopes asked for beside `openid email`.
    pub extra_scopes: Vec<String>,
    /// Whether sign-in through this provider is open.
    pub enabled: bool,
    /// When it was last changed.
    pub updated_at: OffsetDateTime,
}

impl std::fmt::Debug for OidcProvider {
    /// Everything but the sealed secret's bytes (sealed, but still nobody's business in a log).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("role_mappings", &self.role_mappings)
            .field("default_role", &self.default_role)
            .field("allowed_email_domains", &self.allowed_email_domains)
            .field("extra_scopes", &self.extra_scopes)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// What setting a provider asks for.
pub struct ProviderChange<'a> {
    /// The issuer URL (checked by the caller: HTTPS, or HTTP on a loopback address).
    pub issuer: &'a str,
    /// The client id.
    pub client_id: &'a str,
    /// A newly sealed secret, or `None` to keep the current one (refused when there is none).
    pub client_secret_sealed: Option<Vec<u8>>,
    /// Claim -> role rules.
    pub role_mappings: &'a [RoleMapping],
    /// The role when no rule matches.
    pub default_role: Option<Role>,
    /// Email domains open to just-in-time users (lower-cased here).
    pub allowed_email_domains: &'a [String],
    /// Scopes to ask for beside `openid email` (RFC 6749 scope tokens).
    pub extra_scopes: &'a [String],
    /// Whether sign-in is open.
    pub enabled: bool,
}

/// The transaction's tenant's provider, if one is set.
pub async fn provider(tx: &mut TenantTx) -> Result<Option<OidcProvider>, StoreError> {
    let tenant = tx.tenant();
    let row = sqlx::query!(
        "SELECT issuer, client_id, client_secret_sealed, role_mappings, default_role,
                allowed_email_domains, extra_scopes, enabled, updated_at
           FROM tenant_oidc_providers WHERE tenant_id = $1",
        tenant as TenantId,
    )
    .fetch_optional(tx.conn())
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let role_mappings =
        serde_json::from_value(row.role_mappings).map_err(|e| StoreError::Invalid {
            field: "role_mappings",
            reason: format!("stored rules do not parse: {e}"),
        })?;
    let default_role = row
        .default_role
        .map(|name: String| {
            Role::from_name(&name).ok_or_else(|| StoreError::Invalid {
                field: "default_role",
                reason: format!("unknown role {name:?} stored"),
            })
        })
        .transpose()?;
    Ok(Some(OidcProvider {
        issuer: row.issuer,
        client_id: row.client_id,
        client_secret_sealed: row.client_secret_sealed,
        role_mappings,
        default_role,
        allowed_email_domains: row.allowed_email_domains,
        extra_scopes: row.extra_scopes,
        enabled: row.enabled,
        updated_at: row.updated_at,
    }))
}

/// Sets (creates or replaces) the tenant's provider, audited as `tenant.sso_set` with what
/// changed; the secret only as whether it was replaced.
pub async fn set_provider(
    tx: &mut TenantTx,
    change: &ProviderChange<'_>,
    actor: &Actor,
) -> Result<OidcProvider, StoreError> {
    let domains = check_change(change)?;
    let before = provider(tx).await?;
    let sealed = match (&change.client_secret_sealed, &before) {
        (Some(sealed), _) => sealed.clone(),
        (None, Some(current)) => current.client_secret_sealed.clone(),
        (None, None) => {
            return Err(StoreError::Invalid {
                field: "client_secret",
                reason: "required when no provider is set yet".into(),
            })
        }
    };
    let mappings = serde_json::to_value(change.role_mappings).map_err(|e| StoreError::Invalid {
        field: "role_mappings",
        reason: e.to_string(),
    })?;
    let tenant = tx.tenant();
    sqlx::query!(
        "INSERT INTO tenant_oidc_providers (tenant_id, issuer, client_id, client_secret_sealed,
                role_mappings, default_role, allowed_email_domains, extra_scopes, enabled)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (tenant_id) DO UPDATE SET issuer = EXCLUDED.issuer,
                client_id = EXCLUDED.client_id, client_secret_sealed = EXCLUDED.client_secret_sealed,
                role_mappings = EXCLUDED.role_mappings, default_role = EXCLUDED.default_role,
                allowed_email_domains = EXCLUDED.allowed_email_domains,
                extra_scopes = EXCLUDED.extra_scopes, enabled = EXCLUDED.enabled,
                updated_at = now()",
        tenant as TenantId,
        change.issuer,
        change.client_id,
        &sealed,
        mappings,
        change.default_role.map(Role::as_str),
        &domains,
        change.extra_scopes,
        change.enabled,
    )
    .execute(tx.conn())
    .await?;
    let after = provider(tx)
        .await?
        .ok_or(StoreError::NotFound("OIDC provider"))?;
    audit::append(
        tx,
        actor,
        Action::TenantSsoSet,
        &Target::Tenant(tenant),
        &json!({
            "created": before.is_none(),
            "issuer": after.issuer,
            "client_id": after.client_id,
            "client_secret_replaced": change.client_secret_sealed.is_some(),
            "role_mappings": after.role_mappings,
            "default_role": after.default_role,
            "allowed_email_domains": after.allowed_email_domains,
            "extra_scopes": after.extra_scopes,
            "enabled": after.enabled,
        }),
    )
    .await?;
    Ok(after)
}

/// Removes the tenant's provider (and its attempts under way), audited as `tenant.sso_delete`.
/// [`StoreError::NotFound`] when none is set.
pub async fn delete_provider(tx: &mut TenantTx, actor: &Actor) -> Result<(), StoreError> {
    let tenant = tx.tenant();
    let issuer = sqlx::query_scalar!(
        "DELETE FROM tenant_oidc_providers WHERE tenant_id = $1 RETURNING issuer",
        tenant as TenantId,
    )
    .fetch_optional(tx.conn())
    .await?
    .ok_or(StoreError::NotFound("OIDC provider"))?;
    sqlx::query!(
        "DELETE FROM oidc_login_attempts WHERE tenant_id = $1",
        tenant as TenantId
    )
    .execute(tx.conn())
    .await?;
    audit::append(
        tx,
        actor,
        Action::TenantSsoDelete,
        &Target::Tenant(tenant),
        &json!({ "issuer": issuer }),
    )
    .await?;
    Ok(())
}

/// Checks a change before the database; returns the domains lower-cased.
fn check_change(change: &ProviderChange<'_>) -> Result<Vec<String>, StoreError> {
    let invalid = |field: &'static str, reason: String| StoreError::Invalid { field, reason };
    for (field, text, max) in [
        ("issuer", change.issuer, 2000),
        ("client_id", change.client_id, 500),
    ] {
        if text.is_empty() || text.len() > max || text.chars().any(char::is_control) {
            return Err(invalid(
                field,
                format!("must be 1 to {max} bytes without control characters"),
            ));
        }
    }
    if change.role_mappings.len() > MAX_ROLE_MAPPINGS {
        return Err(invalid(
            "role_mappings",
            format!("at most {MAX_ROLE_MAPPINGS}"),
        ));
    }
    for rule in change.role_mappings {
        crate::text::check_text("role_mappings[].claim", &rule.claim)?;
        crate::text::check_text("role_mappings[].value", &rule.value)?;
    }
    check_scopes(change.extra_scopes)?;
    if change.allowed_email_domains.len() > MAX_EMAIL_DOMAINS {
        return Err(invalid(
            "allowed_email_domains",
            format!("at most {MAX_EMAIL_DOMAINS}"),
        ));
    }
    change
        .allowed_email_domains
        .iter()
        .map(|domain| {
            let domain = domain.trim().to_ascii_lowercase();
            let well_formed = !domain.is_empty()
                && domain.len() <= 253
                && domain.contains('.')
                && domain.split('.').all(|l| {
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if well_formed {
                Ok(domain)
            } else {
                Err(invalid(
                    "allowed_email_domains",
                    format!("{domain:?} is not a domain name such as example.com"),
                ))
            }
        })
        .collect()
}

/// Scope tokens of RFC 6749 section 3.3 (printable ASCII but space, `"` and `\`), at most
/// [`MAX_EXTRA_SCOPES`], none of them `openid` or `email` (always asked for).
fn check_scopes(scopes: &[String]) -> Result<(), StoreError> {
    let invalid = |reason: String| StoreError::Invalid {
        field: "extra_scopes",
        reason,
    };
    if scopes.len() > MAX_EXTRA_SCOPES {
        return Err(invalid(format!("at most {MAX_EXTRA_SCOPES}")));
    }
    for scope in scopes {
        let token = !scope.is_empty()
            && scope.len() <= 100
            && scope
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !token || scope == "openid" || scope == "email" {
            return Err(invalid(format!(
                "{scope:?} is not a scope to add (1 to 100 printable characters, no space, \" or \\; openid and email are always asked for)"
            )));
        }
    }
    Ok(())
}

/// A sign-in attempt under way, as `start` records it: hashes only.
pub struct NewAttempt<'a> {
    /// SHA-256 of the `state` sent to the provider.
    pub state_hash: [u8; 32],
    /// SHA-256 of the `nonce` sent to the provider.
    pub nonce_hash: [u8; 32],
    /// SHA-256 of the browser-binding cookie.
    pub browser_hash: [u8; 32],
    /// The redirect URI sent to the provider (the token request must repeat it).
    pub redirect_uri: &'a str,
    /// When the attempt stops being good.
    pub expires_at: OffsetDateTime,
}

/// An attempt taken back by the callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// SHA-256 of the nonce the ID token must carry.
    pub nonce_hash: [u8; 32],
    /// SHA-256 of the browser-binding cookie the callback must present.
    pub browser_hash: [u8; 32],
    /// The redirect URI of the authorization request.
    pub redirect_uri: String,
    /// When it stops being good.
    pub expires_at: OffsetDateTime,
}

/// Records an attempt, after dropping the tenant's expired ones. [`StoreError::Conflict`] when
/// [`MAX_PENDING_ATTEMPTS`] are already under way (the start route is open to anyone).
pub async fn record_attempt(tx: &mut TenantTx, attempt: &NewAttempt<'_>) -> Result<(), StoreError> {
    let tenant = tx.tenant();
    sqlx::query!(
        "DELETE FROM oidc_login_attempts WHERE tenant_id = $1 AND expires_at <= now()",
        tenant as TenantId,
    )
    .execute(tx.conn())
    .await?;
    let pending = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM oidc_login_attempts WHERE tenant_id = $1"#,
        tenant as TenantId,
    )
    .fetch_one(tx.conn())
    .await?;
    if pending >= MAX_PENDING_ATTEMPTS {
        return Err(StoreError::Conflict("too many sign-in attempts under way"));
    }
    sqlx::query!(
        "INSERT INTO oidc_login_attempts (tenant_id, state_hash, nonce_hash, browser_hash,
                redirect_uri, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
        tenant as TenantId,
        &attempt.state_hash[..],
        &attempt.nonce_hash[..],
        &attempt.browser_hash[..],
        attempt.redirect_uri,
        attempt.expires_at,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Takes the attempt of this state hash out of the table, expired or not (the caller refuses an
/// expired one): whatever happens next, the state is spent.
pub async fn consume_attempt(
    tx: &mut TenantTx,
    state_hash: &[u8; 32],
) -> Result<Option<Attempt>, StoreError> {
    let tenant = tx.tenant();
    let row = sqlx::query!(
        "DELETE FROM oidc_login_attempts WHERE tenant_id = $1 AND state_hash = $2
         RETURNING nonce_hash, browser_hash, redirect_uri, expires_at",
        tenant as TenantId,
        &state_hash[..],
    )
    .fetch_optional(tx.conn())
    .await?;
    row.map(|row| {
        Ok(Attempt {
            nonce_hash: hash32("nonce_hash", &row.nonce_hash)?,
            browser_hash: hash32("browser_hash", &row.browser_hash)?,
            redirect_uri: row.redirect_uri,
            expires_at: row.expires_at,
        })
    })
    .transpose()
}

fn hash32(field: &'static str, bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Invalid {
        field,
        reason: format!("stored hash has {} bytes, not 32", bytes.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change<'a>(domains: &'a [String], mappings: &'a [RoleMapping]) -> ProviderChange<'a> {
        ProviderChange {
            issuer: "https://idp.example.com",
            client_id: "fleet",
            client_secret_sealed: None,
            role_mappings: mappings,
            default_role: None,
            allowed_email_domains: domains,
            extra_scopes: &[],
            enabled: true,
        }
    }

    #[test]
    fn domains_are_lower_cased_and_malformed_ones_refused() {
        let good = vec!["Example.COM".to_owned(), " corp.example.org".to_owned()];
        assert_eq!(
            check_change(&change(&good, &[])).unwrap(),
            ["example.com", "corp.example.org"]
        );
        for bad in [
            "",
            "localhost",
            "a..b",
            "ex ample.com",
            "*.example.com",
            "a@b.com",
        ] {
            let domains = vec![bad.to_owned()];
            assert!(check_change(&change(&domains, &[])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rules_and_names_are_checked() {
        let rule = |claim: &str| RoleMapping {
            claim: claim.into(),
            value: "v".into(),
            role: Role::Admin,
        };
        assert!(check_change(&change(&[], &[rule("groups")])).is_ok());
        assert!(check_change(&change(&[], &[rule("")])).is_err());
        let many = vec![rule("groups"); MAX_ROLE_MAPPINGS + 1];
        assert!(check_change(&change(&[], &many)).is_err());
        let scopes = vec!["groups".to_owned(), "offline_access".to_owned()];
        assert!(check_change(&ProviderChange {
            extra_scopes: &scopes,
            ..change(&[], &[])
        })
        .is_ok());
        for bad in ["", "a b", "openid", "q\"uote"] {
            let scopes = vec![bad.to_owned()];
            let refused = check_change(&ProviderChange {
                extra_scopes: &scopes,
                ..change(&[], &[])
            });
            assert!(refused.is_err(), "{bad:?}");
        }
        let mut empty_client = change(&[], &[]);
        empty_client.client_id = "";
        assert!(check_change(&empty_client).is_err());
    }
}
