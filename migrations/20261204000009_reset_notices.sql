-- New recovery codes, and an operator's `gatehouse-origin user mfa-reset`, are mailed to the
-- account's address (OWASP Multifactor Authentication Cheat Sheet: notify users of changes to
-- their factors); the reset also ends every session of the account.
alter table outbox
    drop constraint outbox_template_known,
    add constraint outbox_template_known check (template in (
        'verify_email', 'reset_password', 'password_changed', 'register_attempt',
        'email_change_confirm', 'email_change_taken', 'email_change_notice',
        'password_reset_factors_removed', 'second_factor_added', 'second_factor_removed',
        'recovery_codes_replaced', 'second_factors_reset'
    ));

alter table sessions
    drop constraint sessions_end_reason_known,
    add constraint sessions_end_reason_known check (end_reason in (
        'logout', 'logout_all', 'logout_others', 'password_changed', 'refresh_token_reused',
        'deactivated', 'expired', 'ended_by_user', 'password_reset', 'email_changed',
        'email_change_undone', 'factor_removed', 'factors_reset'
    ));
