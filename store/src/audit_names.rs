//! Who did what to what, as the audit trail records it: typed values with one spelling each.
//!
//! | actor                        | stored as                          |
//! |------------------------------|------------------------------------|
//! | an API key                   | `api_key:<key id>`                 |
//! | an enrollment token          | `enrollment_token:<token id>`      |
//! | a device (its certificate)   | `device:<device id>`               |
//! | a person at `fleetctl` on the database (bootstrap, break-glass) | `operator:<name>@fleetctl` |
//! | fleetd itself                | `system`                           |
//! | a signed-in person           | `user:<user id>`                   |
//! | a sign-in attempt (the name typed, user known or not) | `sign_in:<email>` |
//! | an invitation being accepted | `invitation:<invitation id>`       |
//!
//! Targets are `<kind>:<id>` the same way; actions are the dotted names of [`Action`].

use std::fmt;

use crate::{
    ApiKeyId, DeviceGroupId, DeviceId, EnrollmentTokenId, InvitationId, StoreError, TenantId,
    UserId,
};

/// Who made a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// A request authenticated with this API key.
    ApiKey(ApiKeyId),
    /// A device enrolling with this token.
    EnrollmentToken(EnrollmentTokenId),
    /// A device acting for itself with its certificate (renewal).
    Device(DeviceId),
    /// A person using `fleetctl` directly on the database.
    Operator(OperatorName),
    /// fleetd on its own (retention, start-up).
    System,
    /// A signed-in person (session cookie).
    User(UserId),
    /// Someone signing in as this email (lower-cased; the user may not exist).
    SignIn(String),
    /// Someone accepting this invitation.
    Invitation(InvitationId),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::ApiKey(id) => write!(f, "api_key:{id}"),
            Actor::EnrollmentToken(id) => write!(f, "enrollment_token:{id}"),
            Actor::Device(id) => write!(f, "device:{id}"),
            Actor::Operator(name) => write!(f, "operator:{}@fleetctl", name.0),
            Actor::System => f.write_str("system"),
            Actor::User(id) => write!(f, "user:{id}"),
            Actor::SignIn(email) => write!(f, "sign_in:{email}"),
            Actor::Invitation(id) => write!(f, "invitation:{id}"),
        }
    }
}

/// The name of a person at `fleetctl`, as the operating system gives it: 1 to 64 characters,
/// no control characters, no `@` or `:` (they would make the actor text ambiguous).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorName(String);

impl OperatorName {
    /// Checks and wraps a name.
    pub fn new(name: &str) -> Result<Self, StoreError> {
        let ok = !name.is_empty()
            && name.chars().count() <= 64
            && !name.chars().any(|c| c.is_control() || c == '@' || c == ':');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(StoreError::Invalid {
                field: "operator name",
                reason: "must be 1 to 64 characters without control characters, '@' or ':'".into(),
            })
        }
    }
}

/// What was changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The tenant itself.
    Tenant(TenantId),
    /// A device.
    Device(DeviceId),
    /// A device group.
    DeviceGroup(DeviceGroupId),
    /// An enrollment token.
    EnrollmentToken(EnrollmentTokenId),
    /// An API key.
    ApiKey(ApiKeyId),
    /// A user.
    User(UserId),
    /// An invitation.
    Invitation(InvitationId),
    /// An event of the tenant's own audit chain, by seq.
    AuditEvent(i64),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tenant(id) => write!(f, "tenant:{id}"),
            Target::Device(id) => write!(f, "device:{id}"),
            Target::DeviceGroup(id) => write!(f, "device_group:{id}"),
            Target::EnrollmentToken(id) => write!(f, "enrollment_token:{id}"),
            Target::ApiKey(id) => write!(f, "api_key:{id}"),
            Target::User(id) => write!(f, "user:{id}"),
            Target::Invitation(id) => write!(f, "invitation:{id}"),
            Target::AuditEvent(seq) => write!(f, "audit_event:{seq}"),
        }
    }
}

macro_rules! actions {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// What was done. The stored names are stable: exports and SIEM rules match on them.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Action {
            $($(#[$doc])* $variant,)*
        }

        impl Action {
            /// Every action, for documentation and filters.
            pub const ALL: &'static [Action] = &[$(Action::$variant,)*];

            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Action::$variant => $name,)*
                }
            }

            /// The action with this stored name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(Action::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

actions! {
    /// A tenant was created.
    TenantCreate => "tenant.create",
    /// A tenant's settings changed.
    TenantSettingsUpdate => "tenant.settings_update",
    /// A device enrolled with a token.
    DeviceEnroll => "device.enroll",
    /// A device was created without enrollment (tests, imports).
    DeviceCreate => "device.create",
    /// A device was renamed.
    DeviceRename => "device.rename",
    /// A device's labels were replaced.
    DeviceLabelsSet => "device.labels_set",
    /// A device moved to another group.
    DeviceMove => "device.move",
    /// A device was revoked.
    DeviceRevoke => "device.revoke",
    /// A device renewed its certificate.
    DeviceCertificateRenewed => "device.certificate_renewed",
    /// A device group was created.
    DeviceGroupCreate => "device_group.create",
    /// A device group was renamed.
    DeviceGroupRename => "device_group.rename",
    /// A device group was deleted.
    DeviceGroupDelete => "device_group.delete",
    /// An enrollment token was created.
    EnrollmentTokenCreate => "enrollment_token.create",
    /// An enrollment token was revoked.
    EnrollmentTokenRevoke => "enrollment_token.revoke",
    /// An API key was created.
    ApiKeyCreate => "api_key.create",
    /// An owner key was created on the database, bypassing the API (`fleetctl api-key create`).
    ApiKeyBreakGlassCreate => "api_key.break_glass_create",
    /// An API key was revoked.
    ApiKeyRevoke => "api_key.revoke",
    /// A person was invited (the invitation token is display-once).
    UserInvite => "user.invite",
    /// An invitation was accepted: the user exists, with a password.
    UserInvitationAccept => "user.invitation_accept",
    /// A user was created without an invitation (single sign-on, just in time).
    UserCreate => "user.create",
    /// A person signed in (a full session started).
    UserSignIn => "user.sign_in",
    /// A sign-in failed (wrong password, unknown user, wrong code, disabled, limited).
    UserSignInFailed => "user.sign_in_failed",
    /// A session ended by signing out.
    UserSignOut => "user.sign_out",
    /// Every session of a user ended.
    UserSignOutEverywhere => "user.sign_out_everywhere",
    /// A user changed their password (their other sessions ended).
    UserPasswordChange => "user.password_change",
    /// A user enrolled TOTP (and got new recovery codes).
    UserTotpEnrol => "user.totp_enrol",
    /// A recovery code was used in place of a TOTP code.
    UserRecoveryCodeUse => "user.recovery_code_use",
    /// A user was disabled (their sessions ended).
    UserDisable => "user.disable",
    /// A user was enabled again.
    UserEnable => "user.enable",
    /// A user's role or group scope changed.
    UserRoleChange => "user.role_change",
    /// A user was removed.
    UserRemove => "user.remove",
    /// `fleetctl user reset-mfa` on the database: the user's TOTP and recovery codes removed.
    UserBreakGlassResetMfa => "user.break_glass_reset_mfa",
    /// `fleetctl user set-password` on the database (the user's sessions ended).
    UserBreakGlassSetPassword => "user.break_glass_set_password",
    /// `fleetctl user create-owner` on the database.
    UserBreakGlassCreateOwner => "user.break_glass_create_owner",
    /// A tenant's OIDC single sign-on provider was set or changed.
    TenantSsoSet => "tenant.sso_set",
    /// A tenant's OIDC single sign-on provider was removed.
    TenantSsoDelete => "tenant.sso_delete",
    /// A signed audit checkpoint was written on request (`POST /v1/audit-checkpoints`).
    AuditCheckpoint => "audit.checkpoint",
    /// The compliance evidence report was exported (`GET /v1/reports/evidence`).
    ReportEvidenceExport => "report.evidence_export",
    /// The details of an audit event were replaced by a tombstone (personal data erased).
    AuditErase => "audit.erase",
    /// Events older than the tenant's audit retention were removed behind a signed checkpoint.
    AuditPrune => "audit.prune",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_name_is_unique_and_parses_back() {
        let mut seen = std::collections::HashSet::new();
        for action in Action::ALL {
            assert!(seen.insert(action.as_str()), "{action:?}");
            assert_eq!(Action::from_name(action.as_str()), Some(*action));
        }
        assert_eq!(Action::from_name("device.explode"), None);
    }

    #[test]
    fn operator_names_cannot_forge_another_actor() {
        assert_eq!(
            Actor::Operator(OperatorName::new("alice").unwrap()).to_string(),
            "operator:alice@fleetctl"
        );
        for bad in ["", "a@b", "api_key:x", "a\nb", &"x".repeat(65)] {
            assert!(OperatorName::new(bad).is_err(), "{bad:?}");
        }
    }
}
