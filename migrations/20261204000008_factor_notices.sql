-- A second factor added to or removed from an account is mailed to its address (OWASP
-- Multifactor Authentication Cheat Sheet: notify the user of changes to their factors).
alter table outbox
    drop constraint outbox_template_known,
    add constraint outbox_template_known check (template in (
        'verify_email', 'reset_password', 'password_changed', 'register_attempt',
        'email_change_confirm', 'email_change_taken', 'email_change_notice',
        'password_reset_factors_removed', 'second_factor_added', 'second_factor_removed'
    ));
