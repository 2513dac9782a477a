# Warning flags and sanitizers shared by every target (c-style.md rule 28).
function(mood_add_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:C>:-Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes
                           -Wvla -Wformat=2 -Wno-format-nonliteral>)
  if(MOOD_WERROR)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:C>:-Werror>)
  endif()
endfunction()

if(MOOD_SANITIZE)
  string(REPLACE ";" "," MOOD_SANITIZE_LIST "${MOOD_SANITIZE}")
  add_compile_options("$<$<COMPILE_LANGUAGE:C>:-fsanitize=${MOOD_SANITIZE_LIST};-fno-sanitize-recover=all;-fno-omit-frame-pointer>")
  add_link_options(-fsanitize=${MOOD_SANITIZE_LIST})
endif()
