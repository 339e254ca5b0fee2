//! A Glance service as a job sees it: the endpoints to try in turn (given, or the image
//! endpoints of the Keystone catalog) and how each request proves who we are (a fixed
//! token, or a Keystone [`Session`] shared by every attempt, so one sign-in serves a
//! whole run and is renewed as it nears its expiry).

use std::sync::Arc;

use super::glance::{Glance, GlanceConfig};
use super::keystone::{unversioned, Session, SignIn};
use super::StoreError;

#[derive(Debug)]
pub struct Remote {
    /// Everything but the endpoint.
    template: GlanceConfig,
    /// Given endpoints (versionless); empty: the catalog's.
    endpoints: Vec<String>,
    session: Option<Arc<Session>>,
}

impl Remote {
    /// `template` carries the API, headers (with a fixed token), TLS and timeouts;
    /// `sign_in`, if any, makes the session (no request is made yet).
    pub fn new(
        template: GlanceConfig,
        endpoints: &[String],
        sign_in: Option<SignIn>,
    ) -> Result<Remote, StoreError> {
        let session = match sign_in {
            Some(s) => {
                let agent = super::glance::agent(&template)?;
                Some(Arc::new(Session::new(s, agent)?))
            }
            None => None,
        };
        if endpoints.is_empty() && session.is_none() {
            return Err(StoreError::Config(
                "no image endpoint: give --endpoint (or OS_IMAGE_URL), or a Keystone sign-in (OS_AUTH_URL, OS_CLOUD) whose catalog has one".into(),
            ));
        }
        Ok(Remote {
            template,
            endpoints: endpoints.iter().map(|e| unversioned(e)).collect(),
            session,
        })
    }

    /// The endpoint of attempt `n` (0-based), round robin; the catalog's need a sign-in.
    pub fn endpoint(&self, n: u32) -> Result<String, StoreError> {
        let from_catalog;
        let list = match (&self.session, self.endpoints.is_empty()) {
            (Some(s), true) => {
                from_catalog = s.image_endpoints()?;
                &from_catalog
            }
            _ => &self.endpoints,
        };
        Ok(list[n as usize % list.len()].clone())
    }

    /// The endpoint of attempt `n` for a message, without a request: a given one, or
    /// where the catalog comes from.
    pub fn describe(&self, n: u32) -> String {
        match (&self.session, self.endpoints.is_empty()) {
            (Some(s), true) => format!("the image endpoint in the catalog of {}", s.auth_url()),
            _ => super::redact(&self.endpoints[n as usize % self.endpoints.len()]),
        }
    }

    /// A client for attempt `n`.
    pub fn glance(&self, n: u32) -> Result<Glance, StoreError> {
        let mut cfg = self.template.clone();
        cfg.endpoint = self.endpoint(n)?;
        cfg.auth = self.session.clone();
        Glance::new(cfg)
    }

    /// How many times the job signed in to Keystone (0 without a session).
    pub fn sign_ins(&self) -> u32 {
        self.session.as_ref().map_or(0, |s| s.sign_ins())
    }
}
