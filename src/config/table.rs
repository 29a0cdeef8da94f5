//! `settings!`: one table from which the flags and environment variables, their help, the
//! typed configuration, its defaults, the documentation table and the `/status` view come.
//!
//! Each row reads
//!
//! ```text
//! /// What it does (the help text and the README's wording).
//! raw_name => field: Kind(default, min, max) => "status_key" as |v: &T| …;
//! ```
//!
//! `raw_name` is the flag (`--raw-name`) and, upper-cased, the environment variable; `field`
//! is the typed field; the kind (see `kinds`) parses, defaults and shows the value; the
//! `=> "key"` part, optional, puts it in `/status` (through `as` a function of the value when
//! the kind's own rendering is not what `/status` shows).

macro_rules! settings {
    (
        $(#[$rattr:meta])* root $root:ident { $($rbody:tt)* }
        $( $(#[$gattr:meta])* group $group:ident : $gty:ident { $($gbody:tt)* } )*
    ) => {
        settings!(@raw $($rbody)* $($($gbody)*)*);
        settings!(@group $(#[$rattr])* $root [$($group : $gty),*] [warnings: Vec<String>] { $($rbody)* });
        $( settings!(@group $(#[$gattr])* $gty [] [] { $($gbody)* }); )*
    };

    (@raw $(
        $(#[doc = $doc:literal])*
        $raw:ident => $field:ident : $kind:ident $(<$g:ty>)? ( $($arg:expr),* )
        $(=> $key:literal $(as $show:expr)?)? ;
    )*) => {
        /// Every setting exactly as given on the command line or in the environment.
        #[derive(clap::Args, Debug, Clone, Default)]
        pub struct RawSettings {
            $(
                #[arg(
                    long,
                    env,
                    hide_env_values = <$crate::config::kinds::$kind $(<$g>)? as $crate::config::kinds::Kind>::SECRET,
                    help = $crate::config::help(
                        &[$($doc),*],
                        &$crate::config::kinds::Kind::default_text(
                            &$crate::config::kinds::$kind $(::<$g>)? ($($arg),*)
                        ),
                    ),
                )]
                pub $raw: Option<String>,
            )*
        }

        /// Every setting in the order the table declares them, for the documentation.
        pub fn documented() -> Vec<SettingDoc> {
            vec![$(
                SettingDoc {
                    env: stringify!($raw).to_ascii_uppercase(),
                    default: $crate::config::kinds::Kind::default_text(
                        &$crate::config::kinds::$kind $(::<$g>)? ($($arg),*)
                    ),
                    doc: $crate::config::join_doc(&[$($doc),*]),
                },
            )*]
        }
    };

    (@group $(#[$attr:meta])* $name:ident [$($sub:ident : $subty:ident),*] [$($extra:ident : $ety:ty),*] {$(
        $(#[doc = $doc:literal])*
        $raw:ident => $field:ident : $kind:ident $(<$g:ty>)? ( $($arg:expr),* )
        $(=> $key:literal $(as $show:expr)?)? ;
    )*}) => {
        $(#[$attr])*
        #[derive(Debug, Clone)]
        pub struct $name {
            $(
                $(#[doc = $doc])*
                pub $field: <$crate::config::kinds::$kind $(<$g>)? as $crate::config::kinds::Kind>::Out,
            )*
            $( pub $sub: $subty, )*
            $( pub $extra: $ety, )*
        }

        impl $name {
            fn parse(raw: &RawSettings, p: &mut $crate::config::kinds::Problems) -> Self {
                Self {
                    $(
                        $field: $crate::config::kinds::Kind::parse(
                            &$crate::config::kinds::$kind $(::<$g>)? ($($arg),*),
                            &stringify!($raw).to_ascii_uppercase(),
                            raw.$raw.as_deref().map(str::trim).filter(|s| !s.is_empty()),
                            p,
                        ),
                    )*
                    $( $sub: $subty::parse(raw, p), )*
                    $( $extra: Default::default(), )*
                }
            }

            #[allow(unused_variables)] // a group may show nothing
            fn show(&self, view: &mut serde_json::Map<String, serde_json::Value>) {
                $( settings!(@show view, self, $field, [$kind $(<$g>)?] ($($arg),*) $(=> $key $(as $show)?)?); )*
                $( self.$sub.show(view); )*
            }
        }

        impl Default for $name {
            /// Every setting at its default.
            fn default() -> Self {
                Self::parse(&RawSettings::default(), &mut Default::default())
            }
        }
    };

    (@show $view:ident, $this:ident, $field:ident, [$($kind:tt)*] ($($arg:expr),*)) => {};
    (@show $view:ident, $this:ident, $field:ident, [$kind:ident $(<$g:ty>)?] ($($arg:expr),*) => $key:literal) => {
        $view.insert(
            $key.to_string(),
            $crate::config::kinds::Kind::show(
                &$crate::config::kinds::$kind $(::<$g>)? ($($arg),*),
                &$this.$field,
            ),
        );
    };
    (@show $view:ident, $this:ident, $field:ident, [$($kind:tt)*] ($($arg:expr),*) => $key:literal as $show:expr) => {
        $view.insert($key.to_string(), serde_json::json!(($show)(&$this.$field)));
    };
}
